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
