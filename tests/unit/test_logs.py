"""JSON logs for deployments: one object per line, extra fields kept."""

from __future__ import annotations

import json
import logging

from cxr_common.logs import JsonFormatter


def test_json_formatter_emits_one_parseable_object_with_extras() -> None:
    record = logging.LogRecord(
        "worker.pipeline", logging.INFO, __file__, 1, "scored p=%.3f", (0.912,), None
    )
    record.sop_instance_uid = "1.2.3.4"
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["msg"] == "scored p=0.912"
    assert data["level"] == "INFO"
    assert data["logger"] == "worker.pipeline"
    assert data["sop_instance_uid"] == "1.2.3.4"
    assert "\n" not in line
