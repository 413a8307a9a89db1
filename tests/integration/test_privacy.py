"""No patient-identifying data in logs, heatmap PNGs or stored file names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cxr_triage.send import send_paths
from tests.conftest import Services
from tests.dicom_factory import make_dataset, write
from tests.integration.conftest import wait_until_final

pytestmark = pytest.mark.integration

NAME = "DOE^JANE^Q"
MRN = "MRN-8675309"


def test_patient_data_never_reaches_logs_pngs_or_paths(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = make_dataset(accession="PRIV0001")
    ds.PatientName = NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = "19700101"
    path = write(ds, tmp_path / "private.dcm")
    caplog.set_level(logging.DEBUG)
    assert send_paths([path], "127.0.0.1", listener, progress=False).sent == 1
    worker_log = tmp_path / "worker.log"
    start_worker(batch_size=1, wait_ms=0, log=worker_log)
    assert wait_until_final(engine, 1) == {ds.SOPInstanceUID: "done"}

    texts = {"listener log": caplog.text, "worker log": worker_log.read_text(errors="replace")}
    assert ds.SOPInstanceUID in texts["listener log"]  # the logs do say which instance
    for where, content in texts.items():
        for secret in ("DOE", "JANE", MRN, "19700101"):
            assert secret not in content, f"{secret!r} found in {where}"
    with engine.begin() as conn:
        png = conn.execute(text("SELECT heatmap_png FROM predictions")).scalar_one()
        uri = conn.execute(text("SELECT storage_uri FROM instances")).scalar_one()
    for secret in (b"DOE", b"JANE", MRN.encode(), b"19700101"):
        assert secret not in png
    assert "DOE" not in uri
    assert MRN not in uri
    stored = list((services.data_dir / "instances").rglob("*.dcm"))
    assert stored
    assert all("DOE" not in str(p) and MRN not in str(p) for p in stored)
