"""Golden scores through the worker: the committed DICOM samples sent to a real listener,
scored by a real ``cxr-triage work`` process (batched, with heatmaps), give the recorded
logits and calibrated probabilities in their prediction rows (``tests/golden_scores.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, text

from cxr_triage.send import send_paths
from tests.golden_scores import load_goldens, mismatches
from tests.integration.conftest import wait_until_final

pytestmark = pytest.mark.integration


def test_worker_predictions_match_the_goldens(
    engine: Engine, listener: int, start_worker: Callable[..., object], tmp_path: Path
) -> None:
    goldens = load_goldens()
    names = sorted(goldens.dicom())
    by_sop = {
        str(pydicom.dcmread(goldens.path(n), stop_before_pixels=True).SOPInstanceUID): n
        for n in names
    }
    report = send_paths([goldens.path(n) for n in names], "127.0.0.1", listener, progress=False)
    assert (report.sent, report.failed) == (len(names), 0)
    # every job is queued before the worker starts: its first pulls fill batches of 4
    start_worker(
        batch_size=4, wait_ms=1000, log=tmp_path / "worker.log", extra_env={"CXR_DEVICE": "cpu"}
    )
    wait_until_final(engine, len(names))
    with engine.begin() as conn:
        statuses = {
            r.sop_instance_uid: r.status
            for r in conn.execute(text("SELECT sop_instance_uid, status FROM instances"))
        }
        rows = conn.execute(
            text(
                "SELECT i.sop_instance_uid, p.logit, p.probability, p.model_version, "
                "p.weights_sha256, p.calibration_version, p.batch_size, p.model_role "
                "FROM predictions p JOIN instances i ON i.id = p.instance_id"
            )
        ).all()
    done = {by_sop[sop] for sop, status in statuses.items() if status == "done"}
    # the eligible chest films (the CT, NM, OT and extremity samples are not scored)
    assert len(done) >= 9, statuses
    assert {by_sop[r.sop_instance_uid] for r in rows} == done
    for r in rows:
        assert (r.model_version, r.weights_sha256, r.model_role) == (
            goldens.model_version,
            goldens.weights_sha256,
            "active",
        )
        assert r.calibration_version == goldens.calibration_version
    assert max(r.batch_size for r in rows) > 1  # scored in batches, as in production
    observed = {by_sop[r.sop_instance_uid]: (r.logit, r.probability) for r in rows}
    assert mismatches(goldens, observed, "worker") == []
