"""Free text never reaches logs or reasons (issue 12, defect 10): a name typed into
SeriesDescription, ProtocolName or a body part runs through the listener and a worker;
the not-eligible reasons, both logs and the worklist rows never show it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from sqlalchemy import Engine, text

from cxr_db.worklist import reads
from cxr_triage.send import send_paths
from tests.dicom_factory import make_dataset, write
from tests.integration.conftest import wait_until_final

pytestmark = pytest.mark.integration

SECRETS = ("DOE", "JANE", "MRN-8675309")


def test_not_eligible_reasons_and_logs_hold_no_free_text(
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lateral = make_dataset(view=None, accession="FREE0001")
    lateral.SeriesDescription = "Chest LAT for DOE^JANE MRN-8675309"
    protocol = make_dataset(view="", accession="FREE0002")
    protocol.ProtocolName = "LATERAL DOE JANE"
    body_part = make_dataset(body_part="DOE JANE", accession="FREE0003")
    modality = make_dataset(sop_class=CTImageStorage, modality="CT", accession="FREE0004")
    modality.SeriesDescription = "CT head of DOE^JANE"
    paths = [
        write(ds, tmp_path / f"{i}.dcm")
        for i, ds in enumerate((lateral, protocol, body_part, modality))
    ]
    caplog.set_level(logging.DEBUG)
    assert send_paths(paths, "127.0.0.1", listener, progress=False).sent == 4
    worker_log = tmp_path / "worker.log"
    start_worker(batch_size=1, wait_ms=0, log=worker_log)
    statuses = wait_until_final(engine, 4)
    assert set(statuses.values()) == {"not_eligible"}

    with engine.begin() as conn:
        reasons = [r for (r,) in conn.execute(text("SELECT reason FROM instances ORDER BY id"))]
    assert reasons == [
        "lateral view (SeriesDescription names a lateral view) is not scored; frontal PA/AP only",
        "lateral view (ProtocolName names a lateral view) is not scored; frontal PA/AP only",
        "body part (non-standard value) is not chest",
        "modality CT is not a chest radiograph (CR/DX)",
    ]
    shown = " ".join(
        str(value) for entry in reads.worklist(engine) for value in vars(entry).values()
    )
    texts = {
        "listener log": caplog.text,
        "worker log": worker_log.read_text(errors="replace"),
        "reasons": " ".join(reasons),
        "worklist": shown,
    }
    assert "not eligible" in texts["worker log"]
    for where, content in texts.items():
        for secret in SECRETS:
            assert secret not in content.upper(), f"{secret!r} found in {where}"
