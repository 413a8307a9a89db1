"""The listener's PDU reads: the length bound, and reads that return what was sent."""

from __future__ import annotations

import socket
import threading

import pytest
from pynetdicom.transport import AssociationSocket

from dicom_listener.pdu import READ_CHUNK, _recv, bounded_fast_reads, pdu_length_bound


def test_the_bound_is_twice_the_offer_plus_a_handshake_allowance() -> None:
    assert pdu_length_bound(16382) == 2 * 16382 + 65536
    assert pdu_length_bound(1 << 20) == (2 << 20) + 65536
    assert pdu_length_bound(0) is None  # 0 offers "unlimited": nothing to bound by
    assert pdu_length_bound(None) is None


def test_installing_is_idempotent() -> None:
    bounded_fast_reads()
    bounded_fast_reads()
    assert AssociationSocket.recv is _recv


class _Local:
    maximum_length = 1 << 20


class _Assoc:
    is_acceptor = True
    acceptor = _Local()
    requestor = _Local()


def _socket_pair_reading(payload: bytes, nr_bytes: int) -> bytearray:
    left, right = socket.socketpair()
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = left
    holder._assoc = _Assoc()  # type: ignore[assignment]

    def send() -> None:
        right.sendall(payload)
        right.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return _recv(holder, nr_bytes)
    finally:
        sender.join()
        left.close()


def test_a_large_read_returns_every_byte_in_order() -> None:
    payload = bytes(range(256)) * (3 * READ_CHUNK // 256 + 7)  # several chunks, not aligned
    assert _socket_pair_reading(payload, len(payload)) == payload


def test_a_connection_closed_early_returns_what_arrived() -> None:
    payload = b"x" * 1000
    assert _socket_pair_reading(payload, 5000) == payload


def test_a_claim_over_the_bound_is_refused_before_reading() -> None:
    left, right = socket.socketpair()
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = left
    holder._assoc = _Assoc()  # type: ignore[assignment]
    try:
        # pynetdicom treats an OSError here as a closed transport (Evt17)
        with pytest.raises(ConnectionError, match="Maximum Length"):
            _recv(holder, 100_000_000)
    finally:
        left.close()
        right.close()


# ---------------------------------------------------------------------------------------
# Deadlines and minimum rate (issue 20): a socket timeout alone resets on every byte


class _Policy:
    pdu_timeout_s = 0.5
    min_transfer_rate = 1000.0


class _Server:
    policy = _Policy()


class _PacedAssoc(_Assoc):
    _server = _Server()

    class requestor(_Local):
        address = "127.0.0.9"


def _paced() -> tuple[AssociationSocket, socket.socket, socket.socket]:
    left, right = socket.socketpair()
    left.settimeout(30)  # the io timeout: far longer than the deadline under test
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = left
    holder._assoc = _PacedAssoc()  # type: ignore[assignment]
    return holder, left, right


def _trickle(right: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            right.send(bytes([byte]))
        except OSError:
            return


def test_a_trickled_pdu_is_cut_at_its_deadline_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder, left, right = _paced()
    stop = threading.Event()
    # An A-ASSOCIATE-RQ header at one byte every 0.2 s: the 6 bytes would take 1.2 s.
    sender = threading.Thread(target=_trickle, args=(right, b"\x01\x00\x00\x00\x00\x44", 0.2, stop))
    sender.start()
    try:
        got = _recv(holder, 6)
    finally:
        stop.set()
        sender.join()
        left.close()
        right.close()
    assert 0 < len(got) < 6  # cut before the header was whole
    assert "peer 127.0.0.9 too slow" in caplog.text


def test_a_prompt_pdu_and_a_fast_long_message_pass() -> None:
    holder, left, right = _paced()
    # A-ASSOCIATE-RQ header and body, whole at once.
    body = bytes(68)
    right.sendall(b"\x01\x00" + len(body).to_bytes(4, "big") + body)
    try:
        assert _recv(holder, 6)[0] == 0x01
        assert len(_recv(holder, len(body))) == len(body)
        pace = holder._cxr_pace  # type: ignore[attr-defined]
        assert pace.started is None  # not P-DATA: the transfer is over
    finally:
        left.close()
        right.close()


def _p_data(last: bool, size: int = 10) -> bytes:
    pdv = bytes([1, 0x02 if last else 0x00]) + bytes(size)
    item = len(pdv).to_bytes(4, "big") + pdv
    return b"\x04\x00" + len(item).to_bytes(4, "big") + item


def test_a_message_spread_over_prompt_pdus_must_keep_the_minimum_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten-byte P-DATA fragments, each whole at once, one every 0.2 s: every PDU is
    prompt, but the message averages 50 bytes/s, under the 1000 bytes/s minimum."""
    holder, left, right = _paced()
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(0.2):
            try:
                right.sendall(_p_data(last=False))
            except OSError:
                return

    sender = threading.Thread(target=send)
    sender.start()
    cut = False
    try:
        for _ in range(50):
            header = _recv(holder, 6)
            if len(header) < 6:
                cut = True
                break
            body = _recv(holder, int.from_bytes(header[2:], "big"))
            if len(body) < int.from_bytes(header[2:], "big"):
                cut = True
                break
    finally:
        stop.set()
        sender.join()
        left.close()
        right.close()
    assert cut
    assert "too slow" in caplog.text


def test_the_last_fragment_ends_the_transfer() -> None:
    holder, left, right = _paced()
    right.sendall(_p_data(last=False) + _p_data(last=True))
    try:
        for _ in range(2):
            header = _recv(holder, 6)
            _recv(holder, int.from_bytes(header[2:], "big"))
        assert holder._cxr_pace.started is None  # type: ignore[attr-defined]
    finally:
        left.close()
        right.close()


def test_a_requestor_socket_has_no_deadline() -> None:
    """Our own senders' associations (no server policy) read as before."""
    assert _socket_pair_reading(b"y" * 10, 10) == b"y" * 10
