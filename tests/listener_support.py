"""Helpers for the listener boundary, poison and fuzz tests: start an in-process listener
on a free loopback port, send files as they are, open hostile raw connections."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from cxr_common.settings import ListenerSettings
from cxr_queue import make_celery
from dicom_listener.server import ListenerHandle, start_listener
from tests.conftest import Services


def listener_settings(services: Services, folder: Path, **overrides: object) -> ListenerSettings:
    values: dict[str, object] = {
        "database_url": services.database_url,
        "broker_url": services.broker_url,
        "queue_name": services.queue_name,
        "data_dir": folder,
        "storage_uri": (folder / "instances").as_uri(),
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
        "reconcile_interval_s": 3600.0,
        "reconcile_grace_s": 0.0,
    }
    values.update(overrides)
    return ListenerSettings(**values)  # type: ignore[arg-type]


def start_test_listener(
    services: Services, engine: Engine, folder: Path, **overrides: object
) -> ListenerHandle:
    settings = listener_settings(services, folder, **overrides)
    return start_listener(settings, engine, make_celery(services.broker_url, services.queue_name))


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    error_comment: str | None


def echo(port: int, calling_ae: str = "TEST_SCU", host: str = "127.0.0.1") -> int | None:
    """C-ECHO; the status, or None when no association was established."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(host, port, ae_title="CXR_TRIAGE")
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def store_files(
    port: int,
    paths: Sequence[Path | Dataset],
    calling_ae: str = "TEST_SCU",
    called_ae: str = "CXR_TRIAGE",
) -> list[StoreAnswer | None]:
    """C-STORE each file as it is (bytes unparsed; its File Meta names the SOP class and
    transfer syntax) or each data set, over one association; None where the association
    ended before an answer."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        contexts: set[tuple[str, str]] = set()
        for item in paths:
            meta = (
                item.file_meta
                if isinstance(item, Dataset)
                else pydicom.dcmread(item, stop_before_pixels=True).file_meta
            )
            contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        for sop_class, syntax in sorted(contexts):
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        assert assoc.is_established, "association refused"
        answers: list[StoreAnswer | None] = []
        try:
            for item in paths:
                rsp = assoc.send_c_store(item)
                if "Status" not in rsp:
                    answers.append(None)
                    continue
                comment = rsp.get("ErrorComment")
                answers.append(StoreAnswer(int(rsp.Status), str(comment) if comment else None))
        finally:
            if assoc.is_established:
                assoc.release()
        return answers
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def raw_connection(port: int, source: str = "127.0.0.1", payload: bytes = b"") -> socket.socket:
    """A TCP connection from ``source`` that sends ``payload`` (maybe nothing) and is left
    open: a half-open or garbage peer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    if payload:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # closed by the listener already: fine
    return sock


def instance_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())


def study_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT count(*) FROM studies")).scalar_one())


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
