"""The results sender's heartbeat (issue 17, the defect): ``cxr-triage send-results`` with
``CXR_RESULT_HEARTBEAT_FILE`` set touches that file while it runs, as the ``results``
service's compose healthcheck expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Services
from tests.faults import wait_for

pytestmark = pytest.mark.integration


def test_send_results_touches_its_heartbeat_file(services: Services, tmp_path: Path) -> None:
    beat = tmp_path / "results.alive"
    env = services.env("results")
    env["CXR_RESULT_HEARTBEAT_FILE"] = str(beat)
    log = tmp_path / "results.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "send-results"], env=env, stdout=out, stderr=out
        )
        try:
            wait_for(
                "the heartbeat file touched",
                beat.exists,
                timeout_s=30,
                alive=lambda: proc.poll() is None,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
