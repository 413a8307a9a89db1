"""Helpers for the listener boundary, poison and fuzz tests: start an in-process listener
on a free loopback port, send files as they are, open hostile raw connections."""

from __future__ import annotations

import gc
import socket
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, text

from cxr_common.settings import ListenerSettings
from cxr_queue import make_celery
from dicom_listener.server import ListenerHandle, start_listener
from tests.conftest import Services
from tests.dicom_factory import make_dataset
from tests.fuzz.strategies import DX, split_pdus


def listener_settings(services: Services, folder: Path, **overrides: object) -> ListenerSettings:
    values: dict[str, object] = {
        "database_url": services.role_url("listener"),
        "broker_url": services.broker_url,
        "queue_name": services.queue_name,
        "results_queue_name": f"{services.queue_name}-results",
        "data_dir": folder,
        "storage_uri": (folder / "instances").as_uri(),
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
    }
    values.update(overrides)
    return ListenerSettings(**values)  # type: ignore[arg-type]


def start_test_listener(
    services: Services, engine: Engine, folder: Path, **overrides: object
) -> ListenerHandle:
    """A listener outside a test's fixtures (the fuzz harness); tests use the
    ``start_listener`` fixture (tests/conftest.py), which shuts it down after them."""
    settings = listener_settings(services, folder, **overrides)
    return start_listener(settings, engine, make_celery(services.broker_url, services.queue_name))


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    error_comment: str | None


def close_refused(assoc: Association) -> None:
    """Close the socket of an association that was not established. pynetdicom 3.0.4
    leaves it open when the peer closed the connection first, or drops it unclosed
    (inside a reference cycle, for TLS) when the handshake failed: collect those here,
    where their ResourceWarning is expected, rather than in a later test."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def echo(port: int, calling_ae: str = "TEST_SCU", host: str = "127.0.0.1") -> int | None:
    """C-ECHO; the status, or None when no association was established."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(host, port, ae_title="CXR_TRIAGE")
    if not assoc.is_established:
        close_refused(assoc)
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
                else read_file_meta_info(item)  # the File Meta only: never a hostile body
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


def _pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
    try:
        while data := src.recv(65536):
            if keep is not None:
                keep.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay_once(relay: socket.socket, port: int, recorded: bytearray) -> None:
    """Relay one connection to the listener, keeping what the client sent."""
    client, _ = relay.accept()
    upstream = socket.create_connection(("127.0.0.1", port))
    back = threading.Thread(target=_pump, args=(upstream, client, None))
    back.start()
    _pump(client, upstream, recorded)
    back.join(30)
    client.close()
    upstream.close()


def record_seeds(port: int) -> list[list[bytes]]:
    """Client -> server byte streams of real associations (C-ECHO; C-STORE), recorded by
    a relay between a pynetdicom sender and the listener."""
    seeds: list[list[bytes]] = []
    for contexts, send in (
        ([Verification], lambda a: a.send_c_echo()),
        ([DX], lambda a: a.send_c_store(make_dataset(sop_class=DX, modality="DX"))),
    ):
        relay = socket.create_server(("127.0.0.1", 0))
        recorded = bytearray()
        server = threading.Thread(target=_relay_once, args=(relay, port, recorded))
        server.start()
        ae = AE(ae_title="FUZZ_SCU")
        for sop_class in contexts:
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", relay.getsockname()[1], ae_title="CXR_TRIAGE")
        assert assoc.is_established
        send(assoc)
        assoc.release()
        server.join(30)
        relay.close()
        seeds.append(split_pdus(bytes(recorded)))
    assert all(len(pdus) >= 3 for pdus in seeds)
    return seeds


def read_pdu(sock: socket.socket) -> bytes:
    """One PDU from the listener (b"" when it closed)."""
    head = b""
    while len(head) < 6:
        data = sock.recv(6 - len(head))
        if not data:
            return head
        head += data
    length = int.from_bytes(head[2:6], "big")
    body = b""
    while len(body) < min(length, 1 << 20):
        data = sock.recv(min(length, 1 << 20) - len(body))
        if not data:
            break
        body += data
    return head + body
