"""The DICOM listener over real associations on loopback, with real Postgres and Redis.

Every test starts its own in-process listener on a free port; the queue is the session's
Redis list (kombu keeps a queue as a list named after it), emptied before each test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import pydicom
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from cxr_common.storage import open_storage
from cxr_db import make_engine
from cxr_db.instances import writes as repo
from cxr_queue import make_celery
from cxr_scheduler.reconciler import Reconciler
from dicom_listener.statuses import CALLING_AE_REJECTION, EchoStatus, StoreStatus
from tests.conftest import SAMPLES, Services, StartListener
from tests.dicom_factory import TEST_ROOT, make_dataset, write
from tests.support import running, wait_until

pytestmark = pytest.mark.integration


def _free_closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def queue(services: Services) -> Iterator[redis.Redis]:
    """The Redis client of the broker, with the session's queue list emptied."""
    client = redis.Redis.from_url(services.broker_url)
    client.delete(services.queue_name)
    yield client
    client.delete(services.queue_name)
    client.close()


@pytest.fixture
def start(start_listener: StartListener) -> StartListener:
    """In-process listeners on free ports (tests/conftest.py's ``start_listener``)."""
    return start_listener


def _store(
    port: int,
    datasets: Sequence[Dataset | Path],
    calling_ae: str = "TEST_SCU",
    contexts: list[str] | None = None,
) -> list[int]:
    """C-STORE ``datasets`` (or files, given their ``contexts``) over one association;
    returns the status of each."""
    ae = AE(ae_title=calling_ae)
    if contexts is None:
        contexts = sorted({str(ds.SOPClassUID) for ds in datasets if isinstance(ds, Dataset)})
    for sop_class in contexts:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    try:
        statuses = []
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status))
        return statuses
    finally:
        assoc.release()


def _store_file_as_is(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE the file's bytes unparsed (CR context, as its File Meta says); its status."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    (status,) = _store(port, [path], contexts=[ComputedRadiographyImageStorage])
    return status


def _staged_files(storage_uri: str) -> list[Path]:
    """What the storage's staging folder still holds (temp files of C-STOREs)."""
    return list(open_storage(storage_uri).staging_dir().iterdir())


def _rows(engine: Engine) -> list[tuple[int, str, str, str]]:
    with engine.begin() as conn:
        result = conn.execute(
            text("SELECT id, sop_instance_uid, status, storage_uri FROM instances ORDER BY id")
        )
        return [(r.id, r.sop_instance_uid, r.status, r.storage_uri) for r in result]


def _queued_instance_ids(queue: redis.Redis, name: str) -> list[int]:
    """Instance IDs of the scoring jobs waiting in the Redis list of queue ``name``."""
    ids = []
    for raw in queue.lrange(name, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "cxr.score_instance"
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(int(kwargs["job"]["instance_id"]))
    return sorted(ids)


def _path(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme == "file"
    return Path(unquote(parsed.path))


def test_c_echo_succeeds(start: StartListener) -> None:
    handle = start()
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    rsp = assoc.send_c_echo()
    assoc.release()
    assert int(rsp.Status) == EchoStatus.SUCCESS


def test_samples_are_stored_recorded_and_queued_exactly_once(
    start: StartListener, engine: Engine, queue: redis.Redis, services: Services, tmp_path: Path
) -> None:
    from cxr_triage.send import send_paths

    files = sorted(SAMPLES.rglob("*.dcm"))
    assert len(files) >= 10, "the bundled samples are missing"
    syntaxes = {
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files
    }
    assert len(syntaxes) >= 3  # JPEG baseline, JPEG 2000, implicit/explicit LE ...
    handle = start()

    report = send_paths([SAMPLES], "127.0.0.1", handle.port, progress=False)

    assert (report.sent, report.failed) == (len(files), 0), [
        (r.path.name, r.reason) for r in report.results if r.outcome != "sent"
    ]
    assert {r.status for r in report.results if r.outcome == "sent"} == {StoreStatus.SUCCESS}
    rows = _rows(engine)
    assert len(rows) == len(files)
    assert {status for _, _, status, _ in rows} == {"queued"}
    sent_by_uid = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files
    }
    assert {uid for _, uid, _, _ in rows} == set(sent_by_uid)
    for _, uid, _, uri in rows:
        stored = _path(uri)
        assert stored.is_file()
        assert stored.is_relative_to(tmp_path / "instances")
        ds = pydicom.dcmread(stored)  # a complete Part 10 file, File Meta included
        original = pydicom.dcmread(sent_by_uid[uid])
        assert ds.SOPInstanceUID == uid
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.PixelData == original.PixelData  # stored as sent, never transcoded
    assert _queued_instance_ids(queue, services.queue_name) == sorted(r[0] for r in rows)
    assert _staged_files((tmp_path / "instances").as_uri()) == []


def test_resend_of_the_same_sop_instance_is_success_without_a_second_job_or_row(
    start: StartListener, engine: Engine, queue: redis.Redis, services: Services
) -> None:
    handle = start()
    ds = make_dataset(accession="RESEND01")
    assert _store(handle.port, [ds]) == [StoreStatus.SUCCESS]
    assert _store(handle.port, [ds, ds]) == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]
    rows = _rows(engine)
    assert len(rows) == 1
    assert _queued_instance_ids(queue, services.queue_name) == [rows[0][0]]


def test_dataset_whose_sop_class_differs_from_the_request_gets_0xA900(
    start: StartListener,
    engine: Engine,
    queue: redis.Redis,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = start()
    ds = make_dataset(sop_class=SecondaryCaptureImageStorage)
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage  # the request: CR
    ds.preamble = b"\x00" * 128
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)  # keep the File Meta as set
    # Sent as it is, the File Meta decides the request's Affected SOP Class.
    status = _store_file_as_is(handle.port, path, monkeypatch)
    assert status == int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS) == 0xA900
    assert _rows(engine) == []
    assert queue.llen(services.queue_name) == 0
    assert not any((tmp_path / "instances").rglob("*.dcm"))


def test_undecodable_dataset_gets_0xC210(
    start: StartListener, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = start()
    ds = make_dataset()
    path = write(ds, tmp_path / "garbage.dcm")
    raw = path.read_bytes()
    # Keep the File Meta; replace the data set by a sequence whose item runs past the end.
    split = raw.index(b"\x08\x00", 132 + 12)  # first data set element, group 0008
    broken = (
        b"\x08\x00\x05\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1105) SQ, undefined length
        + b"\xfe\xff\x00\xe0\x10\x00\x00\x00"  # an item of 16 bytes ...
        + b"\xee" * 10  # ... of which only 10 arrive
    )
    path.write_bytes(raw[:split] + broken)
    status = _store_file_as_is(handle.port, path, monkeypatch)
    assert status == int(StoreStatus.UNDECODABLE_DATASET) == 0xC210
    assert _rows(engine) == []


def test_unsupported_sop_class_is_refused(
    start: StartListener, engine: Engine, tmp_path: Path
) -> None:
    from cxr_triage.send import send_paths

    handle = start()
    # At negotiation: the MR presentation context is rejected (abstract syntax not supported).
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    results = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    assoc.release()
    assert results == {MRImageStorage: 0x03}  # abstract syntax not supported
    # Through the client: the file is reported failed with the reason, nothing is stored.
    mr = write(make_dataset(sop_class=MRImageStorage, modality="MR"), tmp_path / "mr.dcm")
    report = send_paths([mr], "127.0.0.1", handle.port, progress=False)
    assert (report.sent, report.failed) == (0, 1)
    assert "not accepted by the listener" in (report.results[0].reason or "")
    assert _rows(engine) == []


def test_unwritable_storage_gets_out_of_resources_and_no_row(
    start: StartListener, engine: Engine, queue: redis.Redis, services: Services, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder should be")
    handle = start(storage_uri=(blocker / "instances").as_uri())
    assert _store(handle.port, [make_dataset()]) == [StoreStatus.OUT_OF_RESOURCES_STORAGE]
    assert 0xA700 <= StoreStatus.OUT_OF_RESOURCES_STORAGE <= 0xA7FF
    assert _rows(engine) == []
    assert queue.llen(services.queue_name) == 0


def test_unreachable_database_gets_out_of_resources_and_leaves_no_file(
    start: StartListener, engine: Engine, queue: redis.Redis, services: Services, tmp_path: Path
) -> None:
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_free_closed_port()}/none")
    try:
        handle = start(engine_=dead)
        assert _store(handle.port, [make_dataset()]) == [StoreStatus.OUT_OF_RESOURCES_DATABASE]
    finally:
        dead.dispose()
    assert 0xA700 <= StoreStatus.OUT_OF_RESOURCES_DATABASE <= 0xA7FF
    assert _rows(engine) == []
    assert queue.llen(services.queue_name) == 0
    instances = tmp_path / "instances"
    assert not any(instances.rglob("*.dcm"))  # no orphan in place
    assert _staged_files(instances.as_uri()) == []  # temp file cleaned up


def test_calling_ae_title_outside_the_allow_list_is_rejected(start: StartListener) -> None:
    handle = start(allowed_calling_ae_titles="MODALITY1, MODALITY2")
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="CXR_TRIAGE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert rj is not None
    assert (rj.result, rj.result_source, rj.diagnostic) == CALLING_AE_REJECTION
    # An allowed AE title gets in.
    ae = AE(ae_title="MODALITY2")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == EchoStatus.SUCCESS
    assoc.release()


def test_broker_down_still_acknowledges_and_the_reconciler_enqueues_later(
    start: StartListener, engine: Engine, queue: redis.Redis, services: Services
) -> None:
    handle = start(broker_url=f"redis://127.0.0.1:{_free_closed_port()}/0")
    assert _store(handle.port, [make_dataset()]) == [StoreStatus.SUCCESS]
    rows = _rows(engine)
    assert [status for _, _, status, _ in rows] == ["received"]
    assert queue.llen(services.queue_name) == 0
    app = make_celery(services.broker_url, services.queue_name)
    assert Reconciler(engine, app, services.queue_name, 3600, 0).run_once() == 1
    assert _queued_instance_ids(queue, services.queue_name) == [rows[0][0]]
    assert [status for _, _, status, _ in _rows(engine)] == ["queued"]


def _record_without_enqueue(engine: Engine, study: str, sop: str) -> repo.RecordResult:
    """An instance committed by a listener that died before enqueueing it."""
    return repo.record_instance(
        engine,
        repo.InstanceRecord(
            study_instance_uid=TEST_ROOT + study,
            sop_instance_uid=TEST_ROOT + sop,
            sop_class_uid=ComputedRadiographyImageStorage,
            series_instance_uid=None,
            transfer_syntax_uid=None,
            accession_number=None,
            modality="CR",
            body_part=None,
            view_position=None,
            calling_ae_title=None,
            storage_uri=f"file:///nowhere/{study}/{sop}.dcm",
            size_bytes=1,
        ),
    )


def test_reconciler_enqueues_recorded_but_unenqueued_instances_once(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    result = _record_without_enqueue(engine, "1", "2")
    assert result.created
    app = make_celery(services.broker_url, services.queue_name)
    # Within the grace period the handler may still enqueue it itself: left alone.
    assert Reconciler(engine, app, services.queue_name, 3600, 3600).run_once() == 0
    assert queue.llen(services.queue_name) == 0
    reconciler = Reconciler(engine, app, services.queue_name, 3600, 0)
    assert reconciler.run_once() == 1
    assert reconciler.run_once() == 0  # already queued: not enqueued again
    assert _queued_instance_ids(queue, services.queue_name) == [result.instance_id]
    assert [status for _, _, status, _ in _rows(engine)] == ["queued"]


def test_reconciler_requeues_instances_stuck_in_processing_once(
    engine: Engine, queue: redis.Redis, services: Services
) -> None:
    result = _record_without_enqueue(engine, "3", "4")
    repo.mark_enqueued(engine, result.instance_id)
    assert repo.start_processing(engine, result.instance_id, TEST_ROOT + "4") is not None
    app = make_celery(services.broker_url, services.queue_name)
    reconciler = Reconciler(engine, app, services.queue_name, 3600, 0, stale_processing_s=600)
    assert reconciler.run_once() == 0  # processing for seconds only: a worker has it
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE instances SET updated_at = now() - interval '1 hour' WHERE id = :i"),
            {"i": result.instance_id},
        )
    assert reconciler.run_once() == 1
    assert reconciler.run_once() == 0  # touched: not re-enqueued on every pass
    assert _queued_instance_ids(queue, services.queue_name) == [result.instance_id]


def test_send_command_reports_skips_and_failures_with_its_exit_code(
    start: StartListener, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from cxr_triage.send import add_send_arguments, run_send

    handle = start()
    folder = tmp_path / "backlog"
    write(make_dataset(accession="CLI00001"), folder / "a" / "one.dcm")
    write(make_dataset(accession="CLI00002"), folder / "b" / "c" / "two.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    parser = argparse.ArgumentParser(prog="cxr-triage send")
    add_send_arguments(parser)
    assert "listener DICOM port" in parser.format_help()

    args = parser.parse_args([str(folder), "--port", str(handle.port), "--no-progress"])
    assert run_send(args) == 0
    out, err = capsys.readouterr()
    assert "sent 2, failed 0, skipped 1" in out
    assert "notes.txt" in err
    assert "not a DICOM file" in err
    assert len(_rows(engine)) == 2

    args = parser.parse_args([str(folder), "--port", str(_free_closed_port()), "--no-progress"])
    assert run_send(args) == 1
    out, err = capsys.readouterr()
    assert "sent 0, failed 2, skipped 1" in out
    assert "could not connect" in err

    args = parser.parse_args([str(folder / "notes.txt"), "--port", str(handle.port)])
    assert run_send(args) == 2
    assert "no DICOM files found" in capsys.readouterr().err


def test_run_listener_serves_until_sigterm_then_exits_cleanly(
    services: Services, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = _free_closed_port()
    env = dict(os.environ)
    env.update(
        CXR_DATABASE_URL=services.database_url,
        CXR_BROKER_URL=services.broker_url,
        CXR_QUEUE_NAME=services.queue_name,
        CXR_STORAGE_URI=(tmp_path / "instances").as_uri(),
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
    )
    code = (
        "import sys; from cxr_common.settings import listener_settings; "
        "from dicom_listener.server import run_listener; "
        "sys.exit(run_listener(listener_settings()))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        ae = AE(ae_title="TEST_SCU")
        ae.add_requested_context(Verification)
        assoc = wait_until(
            lambda: (
                (a := ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")).is_established and a
            ),
            60,
            "the listener accepting an association",
            alive=running([proc]),
        )
        assert int(assoc.send_c_echo().Status) == EchoStatus.SUCCESS
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
