"""The DICOM trust boundary (issue 12, defect 9) over real sockets and associations:
called AE title, peer networks, floods of garbage and half-open connections, stalled
PDUs, aborted transfers (no temp file left anywhere), DICOM TLS (pynetdicom and DCMTK
``storescu +tls``), production mode."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine

from cxr_common.errors import ConfigurationError
from cxr_common.settings import ListenerSettings
from dicom_listener.boundary import holds_connection
from dicom_listener.server import ListenerHandle
from dicom_listener.statuses import CALLED_AE_REJECTION, EchoStatus, StoreStatus
from tests.conftest import Services, StartListener
from tests.dicom_factory import chest_like, make_dataset, write
from tests.listener_support import (
    close_refused,
    echo,
    files_under,
    instance_count,
    raw_connection,
    read_pdu,
    record_seeds,
    store_files,
)
from tests.peers import requires_peer
from tests.support import wait_until

pytestmark = pytest.mark.integration

Start = Callable[..., ListenerHandle]


@pytest.fixture
def start(start_listener: StartListener) -> StartListener:
    """In-process listeners on free ports (tests/conftest.py's ``start_listener``)."""
    return start_listener


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder, for this test: a fresh, empty one."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _receive_files(tmp_path: Path) -> list[Path]:
    staging = tmp_path / "instances" / ".staging"
    return sorted(staging.glob("recv-*")) if staging.exists() else []


# ---------------------------------------------------------------------------------------
# AE titles and peer networks


def test_another_called_ae_title_is_rejected(start: Start) -> None:
    handle = start()
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert rj is not None
    assert (rj.result, rj.result_source, rj.diagnostic) == CALLED_AE_REJECTION
    assert echo(handle.port) == EchoStatus.SUCCESS  # ours is fine


def test_accept_any_called_ae_title_lets_a_router_rewrite_it(start: Start) -> None:
    handle = start(accept_any_called_ae_title=True)
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="ROUTER_REWROTE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == EchoStatus.SUCCESS
    assoc.release()


def test_source_address_outside_the_peer_networks_is_closed_at_accept(start: Start) -> None:
    handle = start(allowed_peer_networks="10.0.0.0/8, 192.168.7.0/24")
    assert echo(handle.port) is None  # 127.0.0.1 is not on the list
    assert handle.server.refused_connections == 1  # type: ignore[attr-defined]
    handle = start(allowed_peer_networks="10.0.0.0/8, 127.0.0.1/32")
    assert echo(handle.port) == EchoStatus.SUCCESS


def test_production_mode_refuses_to_start_without_an_allow_list(
    services: Services, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="production mode"):
        ListenerSettings(environment="production")
    ListenerSettings(environment="production", allowed_calling_ae_titles="MODALITY1")
    ListenerSettings(environment="production", allowed_peer_networks="10.1.0.0/16")
    ListenerSettings(environment="production", accept_any_peer=True)
    env = services.env("listener")
    env.update(CXR_ENVIRONMENT="production", CXR_DICOM_PORT="0")
    env.pop("CXR_ALLOWED_CALLING_AE_TITLES", None)
    env.pop("CXR_ALLOWED_PEER_NETWORKS", None)
    done = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "listen"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "CXR_ACCEPT_ANY_PEER=true" in done.stderr
    assert "CXR_ALLOWED_PEER_NETWORKS" in done.stderr


# ---------------------------------------------------------------------------------------
# Floods, half-open and stalled peers


def test_200_garbage_and_half_open_connections_do_not_lock_out_a_legitimate_sender(
    start: Start, engine: Engine
) -> None:
    # The listener's timeouts (120 s) are longer than the sender's own (echo 30 s, store
    # 60 s): the sender can only succeed because the flood is contained, never because
    # the flood timed out first.
    handle = start(acse_timeout_s=120, network_timeout_s=120)
    garbage = [
        b"",  # connect and say nothing
        b"\x01\x00\x00\x00\x10\x00",  # an A-ASSOCIATE-RQ header, then silence
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello start
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 4,
    ]
    flood: list[socket.socket] = []
    try:
        for i in range(200):
            try:
                flood.append(raw_connection(handle.port, "127.0.0.2", garbage[i % len(garbage)]))
            except OSError:
                pass  # closed by the listener while connecting: that is the point
        assert echo(handle.port) == EchoStatus.SUCCESS
        answers = store_files(handle.port, [make_dataset(accession="FLOOD001")])
        still_open = sum(_open_on_our_side(sock) for sock in flood)
    finally:
        for sock in flood:
            sock.close()
    refused = handle.server.refused_connections  # type: ignore[attr-defined]
    print(f"\nflood: {len(flood)} connected, {refused} closed at accept, {still_open} held")
    assert answers[0] is not None
    assert answers[0].status == StoreStatus.SUCCESS
    assert instance_count(engine) == 1
    # The flood takes at most max_associations_per_peer (4) association slots at once,
    # plus 2 waiting for their A-ASSOCIATE-RJ (max_refusals_per_peer; issue 20). Garbage
    # the listener aborts (a PDU too long, an unknown PDU type) frees its slot at once, so
    # another flood connection may take it, while the aborted socket waits for the peer's
    # close (Sta13, at most the ARTIM timer): those count against max_connections (64)
    # only. So the sockets held stay under that cap (7-10 seen), and the count closed at
    # accept is 194 or some less (176-188 seen).
    assert still_open <= 64
    assert refused >= 200 - 6 - len(garbage) * 8


def _open_on_our_side(sock: socket.socket) -> bool:
    """Whether the listener still holds ``sock`` open (it neither closed nor reset it)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass  # an answer (e.g. an abort) may come before the close
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def test_silent_connections_from_the_sender_own_address_use_no_association_slot(
    start: Start,
) -> None:
    """pynetdicom counted every open TCP connection as an association: 20 silent ones
    meant "local limit exceeded" for everyone until their ARTIM timer expired."""
    handle = start(
        acse_timeout_s=120, max_associations=5, max_associations_per_peer=100, max_connections=100
    )
    silent = [raw_connection(handle.port) for _ in range(20)]
    try:
        wait_until(
            lambda: len(handle.server.active_associations) >= 20, 30, "the silent connections"
        )
        assert echo(handle.port) == EchoStatus.SUCCESS
    finally:
        for sock in silent:
            sock.close()


def test_a_peer_that_stalls_mid_pdu_is_closed_after_the_network_timeout(start: Start) -> None:
    handle = start(network_timeout_s=1, acse_timeout_s=1)
    sock = raw_connection(handle.port, payload=b"\x01\x00\x00\x00\x10\x00")  # 4 KiB promised
    try:
        sock.settimeout(30)
        assert sock.recv(1024) in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
        wait_until(lambda: not handle.server.active_associations, 30, "the thread to end")
    finally:
        sock.close()


def test_the_listener_offers_its_maximum_pdu_length(start: Start) -> None:
    handle = start(dicom_max_pdu_bytes=262144)
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    try:
        assert assoc.acceptor.maximum_length == 262144  # what a sender may send us
        assert int(assoc.send_c_echo().Status) == EchoStatus.SUCCESS
    finally:
        assoc.release()


def test_a_pdu_longer_than_offered_closes_the_connection_without_buffering_it(
    start: Start,
) -> None:
    # the ACSE timeout (15 s) ends the association thread afterwards, as for any peer
    # that never completes an A-ASSOCIATE-RQ; the connection itself is closed at once:
    # the client waits 10 s, less than either timeout, so only the length can close it
    handle = start(dicom_max_pdu_bytes=16382, network_timeout_s=60, acse_timeout_s=15)
    claimed = 100_000_000  # a 100 MB "A-ASSOCIATE-RQ"; the bound is 2 x 16382 + 64 KiB
    sock = raw_connection(handle.port, payload=b"\x01\x00" + claimed.to_bytes(4, "big"))
    try:
        sock.settimeout(10)  # a TimeoutError here: the listener waited for the 100 MB
        try:
            while sock.recv(65536):  # an A-ABORT, maybe, then the close
                pass
        except ConnectionResetError:
            pass
        wait_until(lambda: not handle.server.active_associations, 40, "the thread to end")
    finally:
        sock.close()
    assert echo(handle.port) == EchoStatus.SUCCESS


# ---------------------------------------------------------------------------------------
# Received data sets: staging only, nothing left after an abort


def test_received_data_sets_are_spooled_in_staging_never_in_the_system_temp_folder(
    start: Start, private_tmp: Path, tmp_path: Path
) -> None:
    handle = start()
    answers = store_files(handle.port, [make_dataset(accession="SPOOL001")])
    assert answers[0] is not None
    assert answers[0].status == StoreStatus.SUCCESS
    assert files_under(private_tmp) == []
    assert _receive_files(tmp_path) == []


def test_an_aborted_transfer_leaves_no_partial_file(
    start: Start, engine: Engine, private_tmp: Path, tmp_path: Path
) -> None:
    handle = start(dicom_max_pdu_bytes=16382)  # pynetdicom's default, so many PDUs
    ds = make_dataset(chest_like(2048), accession="ABORT001")  # 4 MiB: ~250 P-DATA PDUs
    first_pdus_sent = threading.Event()
    resume = threading.Event()
    sent = [0]

    def on_pdu_sent(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sent[0] += 1
            if sent[0] == 20:
                first_pdus_sent.set()
                resume.wait(30)

    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        handle.port,
        ae_title="CXR_TRIAGE",
        evt_handlers=[(evt.EVT_PDU_SENT, on_pdu_sent)],
    )
    assert assoc.is_established
    sender = threading.Thread(target=lambda: assoc.send_c_store(ds), daemon=True)
    sender.start()
    try:
        assert first_pdus_sent.wait(30)
        wait_until(lambda: bool(_receive_files(tmp_path)), 30, "the receive file")
        # The modality dies mid-transfer: its connection is gone.
        raw = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert raw is not None
        raw.shutdown(socket.SHUT_RDWR)
    finally:
        resume.set()
    sender.join(30)
    raw.close()  # pynetdicom leaves a socket shut down under it open (a ResourceWarning later)
    wait_until(lambda: not _receive_files(tmp_path), 30, "the partial file to be removed")
    assert files_under(private_tmp) == []
    assert instance_count(engine) == 0
    assert echo(handle.port) == EchoStatus.SUCCESS


# ---------------------------------------------------------------------------------------
# DICOM TLS


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_file(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def cert_file(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        cn: str,
        issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey,
        key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        usage: x509.ObjectIdentifier | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("cxr-test-ca", name("cxr-test-ca"), ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(
        "localhost", name("cxr-test-ca"), ca_key, server_key, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = issue(
        "modality", name("cxr-test-ca"), ca_key, client_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    rogue = issue(
        "rogue", name("rogue"), rogue_key, rogue_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Pki(
        ca=cert_file(ca_cert, folder / "ca.pem"),
        server_cert=cert_file(server, folder / "server.pem"),
        server_key=key_file(server_key, folder / "server.key"),
        client_cert=cert_file(client, folder / "client.pem"),
        client_key=key_file(client_key, folder / "client.key"),
        rogue_cert=cert_file(rogue, folder / "rogue.pem"),
        rogue_key=key_file(rogue_key, folder / "rogue.key"),
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return _make_pki(folder)


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _tls_echo(port: int, context: ssl.SSLContext) -> int | None:
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE", tls_args=(context, "localhost"))
    if not assoc.is_established:
        close_refused(assoc)
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_dicom_tls_with_client_certificates(start: Start, pki: Pki, engine: Engine) -> None:
    handle = start(
        dicom_tls_cert=pki.server_cert,
        dicom_tls_key=pki.server_key,
        dicom_tls_ca=pki.ca,
    )
    good = _client_context(pki, pki.client_cert, pki.client_key)
    # Silent peers that never send a ClientHello do not stall the accept loop.
    silent = [raw_connection(handle.port, "127.0.0.2") for _ in range(3)]
    try:
        assert _tls_echo(handle.port, good) == EchoStatus.SUCCESS
    finally:
        for sock in silent:
            sock.close()
    assert _tls_echo(handle.port, _client_context(pki, None, None)) is None  # no client cert
    assert _tls_echo(handle.port, _client_context(pki, pki.rogue_cert, pki.rogue_key)) is None
    assert echo(handle.port) is None  # plain TCP to the TLS port
    assert echo(handle.port) is None
    assert _tls_echo(handle.port, good) == EchoStatus.SUCCESS  # still serving
    assert instance_count(engine) == 0


def test_dicom_tls_without_client_certificates(start: Start, pki: Pki) -> None:
    handle = start(dicom_tls_cert=pki.server_cert, dicom_tls_key=pki.server_key)
    assert _tls_echo(handle.port, _client_context(pki, None, None)) == EchoStatus.SUCCESS


def test_tls_settings_are_checked(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="CXR_DICOM_TLS_KEY"):
        ListenerSettings(dicom_tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="CXR_DICOM_TLS_CA"):
        ListenerSettings(dicom_tls_ca=pki.ca)
    with pytest.raises(ValueError, match="not a readable file"):
        ListenerSettings(dicom_tls_cert=Path("/nowhere.pem"), dicom_tls_key=pki.server_key)
    with pytest.raises(ConfigurationError):
        ListenerSettings().with_overrides(dicom_tls_ca=pki.ca)
    monkeypatch.setenv("CXR_DICOM_TLS_CERT", "")  # compose's default: no TLS
    monkeypatch.setenv("CXR_DICOM_TLS_KEY", "")
    assert ListenerSettings().dicom_tls_cert is None


@requires_peer("dcmtk")
def test_dcmtk_storescu_over_tls(start: Start, pki: Pki, engine: Engine, tmp_path: Path) -> None:
    handle = start(
        dicom_tls_cert=pki.server_cert,
        dicom_tls_key=pki.server_key,
        dicom_tls_ca=pki.ca,
    )
    path = write(make_dataset(accession="TLS00001"), tmp_path / "tls.dcm")

    def storescu(*tls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["storescu", "-aet", "DCMTK_SCU", "-aec", "CXR_TRIAGE", *tls]
            + ["127.0.0.1", str(handle.port), str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = storescu("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    assert done.returncode == 0, done.stderr
    assert instance_count(engine) == 1
    refused = storescu("+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca))
    assert refused.returncode != 0
    plain = storescu()
    assert plain.returncode != 0
    assert instance_count(engine) == 1


# ---------------------------------------------------------------------------------------
# Protocol errors (found by the fuzz)


def test_p_data_for_a_context_never_accepted_aborts_cleanly(
    start: Start, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's DIMSE decoder raised KeyError for a P-DATA naming a presentation
    context that was not accepted: its DUL thread died, the socket and the partial
    receive file stayed open. Now: A-ABORT, connection closed, nothing left."""
    errors: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(repr(args.exc_value)))
    handle = start()
    rq, *p_data, _release = record_seeds(handle.port)[1]
    forged = []
    for pdu in p_data:
        pdu = bytearray(pdu)
        pdu[10] = 99  # the first PDV's presentation context ID: never proposed
        forged.append(bytes(pdu))
    with socket.create_connection(("127.0.0.1", handle.port), timeout=30) as sock:
        sock.sendall(rq)
        assert read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.sendall(b"".join(forged))
        answers = []
        while pdu := read_pdu(sock):
            answers.append(pdu[:1])
    assert answers[:1] == [b"\x07"]  # A-ABORT, then the listener closed
    wait_until(lambda: not _receive_files(tmp_path), 30, "the partial file to be removed")
    wait_until(
        lambda: not any(holds_connection(a) for a in handle.server.active_associations),
        30,
        "the association to end",
    )
    assert errors == []
    assert instance_count(engine) == 1  # the recorded seed's own C-STORE
    assert echo(handle.port) == EchoStatus.SUCCESS
