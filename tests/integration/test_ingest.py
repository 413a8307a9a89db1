"""The ingest core against real Postgres and Redis, without a transport: stored,
duplicate and conflict outcomes, the patient context kept on the row, and the listener
parsing each received file once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom.filereader
import pytest
import redis
from sqlalchemy import Engine, text

import cxr_imaging.limits
import cxr_ingest.core
from cxr_common.storage import FileStorage
from cxr_db.conflicts import store as conflicts
from cxr_ingest import (
    Disposition,
    Ingest,
    Received,
    RefusalCode,
    Source,
    Transport,
    content_sha256,
    ingest,
)
from cxr_queue import make_celery
from cxr_triage.send import send_paths
from tests.conftest import Services
from tests.dicom_factory import make_dataset, write
from worklist.radiograph import patient_context

pytestmark = pytest.mark.integration


@pytest.fixture
def rules(services: Services, engine: Engine, tmp_path: Path) -> Ingest:
    return Ingest(
        engine,
        FileStorage(tmp_path / "instances"),
        make_celery(services.broker_url, services.queue_name),
        services.queue_name,
        uid_root="1.2.826.0.1.3680043.10.999",
    )


def _queued(services: Services) -> int:
    client = redis.Redis.from_url(services.broker_url)
    try:
        return int(client.llen(services.queue_name))
    finally:
        client.close()


def _stow(peer: str = "198.51.100.4") -> Source:
    return Source(Transport.STOW, identity="reporting-app", peer_address=peer)


def test_stored_then_duplicate_then_conflict_through_the_core(
    rules: Ingest, services: Services, engine: Engine, tmp_path: Path
) -> None:
    ds = make_dataset(accession="ING0001")
    ds.PatientName = "DOE^JANE^Q"
    ds.PatientID = "MRN-1"
    ds.PatientSex = "F"
    ds.PatientAge = "042Y"
    ds.StudyDate = "20261201"
    data = write(ds, tmp_path / "a.dcm").read_bytes()

    stored = ingest(rules, Received(data=data), _stow())
    assert stored.disposition is Disposition.STORED
    assert stored.enqueued
    assert stored.instance_id is not None
    assert stored.sop_instance_uid == ds.SOPInstanceUID
    assert _queued(services) == 1
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT status, calling_ae_title, content_sha256, patient_context, storage_uri "
                "FROM instances WHERE id = :id"
            ),
            {"id": stored.instance_id},
        ).one()
    assert row.status == "queued"
    assert row.calling_ae_title is None  # STOW-RS has no AE title
    assert row.content_sha256 == content_sha256(tmp_path / "a.dcm", ds.file_meta.TransferSyntaxUID)
    assert row.patient_context["PatientName"] == "DOE^JANE^Q"
    assert row.patient_context["PatientID"] == "MRN-1"
    assert row.patient_context["age_years"] == 42.0
    assert "PatientBirthDate" not in row.patient_context

    again = ingest(rules, Received(data=data), _stow())
    assert again.disposition is Disposition.DUPLICATE
    assert again.success
    assert again.instance_id == stored.instance_id
    assert _queued(services) == 1  # no second job

    ds.PixelData = bytes(len(ds.PixelData))  # other pixels, same SOP Instance UID
    changed = write(ds, tmp_path / "b.dcm").read_bytes()
    conflict = ingest(rules, Received(data=changed), _stow("198.51.100.9"))
    assert conflict.refusal is RefusalCode.CONTENT_CONFLICT
    assert conflict.instance_id == stored.instance_id
    assert conflict.comment == "SOP Instance UID already stored with different content"
    events = conflicts.conflicts(engine)
    assert [(e.instance_id, e.peer_address) for e in events] == [
        (stored.instance_id, "198.51.100.9")
    ]
    assert not any(rules.storage.staging_dir().iterdir())


def test_the_study_page_context_comes_from_the_row_not_the_file(
    rules: Ingest, engine: Engine, tmp_path: Path
) -> None:
    ds = make_dataset(view="AP")
    ds.PatientName = "ROE^RICHARD"
    ds.PatientID = "MRN-2"
    ds.BurnedInAnnotation = "YES"
    data = write(ds, tmp_path / "a.dcm").read_bytes()
    outcome = ingest(rules, Received(data=data), _stow())
    assert outcome.disposition is Disposition.STORED
    with engine.begin() as conn:
        uri = conn.execute(
            text("SELECT storage_uri FROM instances WHERE id = :id"), {"id": outcome.instance_id}
        ).scalar_one()
    Path(uri.removeprefix("file://")).unlink()  # the page must not need the file

    context = patient_context(uri, engine, ds.SOPInstanceUID)
    assert context.name == "ROE, RICHARD"
    assert context.patient_id == "MRN-2"
    assert context.view == "AP"
    assert context.burned_in_annotation is True


@pytest.fixture
def header_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files every DICOM parse in this process starts on (pydicom's
    ``read_preamble``: dcmread, read_header and check_instance all begin there)."""
    seen: list[str] = []
    lock = threading.Lock()
    original: Callable[..., Any] = pydicom.filereader.read_preamble

    def counting(fp: Any, force: bool) -> Any:
        with lock:
            seen.append(str(getattr(fp, "name", "")))
        return original(fp, force)

    monkeypatch.setattr(pydicom.filereader, "read_preamble", counting)
    monkeypatch.setattr(cxr_imaging.limits, "read_preamble", counting)
    return seen


def test_the_listener_parses_each_received_file_once_and_hashes_it_while_receiving(
    services: Services,
    engine: Engine,
    listener: int,
    header_reads: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = [write(make_dataset(), tmp_path / f"cr{i}.dcm") for i in range(3)]
    file_hashes: list[Path] = []
    monkeypatch.setattr(
        cxr_ingest.core,
        "content_sha256",
        lambda source, syntax: file_hashes.append(source) or content_sha256(source, syntax),
    )
    header_reads.clear()  # the client's own reads of its files are not the listener's
    sent_from = str(tmp_path)
    assert send_paths(files, "127.0.0.1", listener, progress=False).sent == 3
    received = [name for name in header_reads if not name.startswith(sent_from)]
    assert len(received) == 3, received  # one parse per received file, nothing else
    staging = str(services.data_dir / "instances" / ".staging")
    assert all(name.startswith(staging) for name in received)
    assert file_hashes == []  # hashed while received: no file was read again to hash it
    with engine.begin() as conn:
        hashes = dict(
            conn.execute(text("SELECT sop_instance_uid, content_sha256 FROM instances")).all()
        )
    from pydicom import dcmread

    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        assert hashes[ds.SOPInstanceUID] == content_sha256(path, ds.file_meta.TransferSyntaxUID)
