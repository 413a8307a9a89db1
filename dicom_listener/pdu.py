"""Reading PDUs off the socket: in large reads, and never more than the PDU size we offered.

pynetdicom 3.0 reads every PDU with ``socket.recv(4096)`` in a Python loop, so a 7 MB
radiograph costs ~1,800 interpreter round trips under the GIL on top of its PDUs, and it
accepts whatever PDU length a peer writes in the header: a peer that claims a 4 GB PDU
and keeps sending is buffered to the last byte. :func:`bounded_fast_reads` replaces the
read with one that takes what the socket holds (up to :data:`READ_CHUNK` a call) and
closes the connection (pynetdicom's Evt17, logged) when a single read asks for more than
:func:`pdu_length_bound` of the Maximum Length we offered. Measured in BENCHMARKS.md
("Goal 1, phase 3").
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from typing import Any, cast

from pynetdicom.transport import AssociationSocket

logger = logging.getLogger(__name__)

#: Largest single ``recv`` (loopback and LAN socket buffers hold less than this).
READ_CHUNK = 1 << 18
#: A-ASSOCIATE PDUs are not bound by the Maximum Length; real ones are a few kB.
_HANDSHAKE_ALLOWANCE = 1 << 16


def pdu_length_bound(offered_max_length: int | None) -> int | None:
    """The longest PDU we read when we offered ``offered_max_length`` (0 or None: no
    bound). Twice the offer plus 64 kB: a conforming peer never comes near it, one that
    is off by a header still gets through, a hostile one is stopped."""
    if not offered_max_length:
        return None
    return 2 * offered_max_length + _HANDSHAKE_ALLOWANCE


def _offered_max_length(sock: AssociationSocket) -> int | None:
    assoc: Any = getattr(sock, "_assoc", None)
    if assoc is None:
        return None
    local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    return cast(int | None, local.maximum_length)


class Pace:
    """Deadlines of one acceptor connection (issue 20: a socket timeout alone resets on
    every byte, so ten peers trickling a byte every 5 s held every association slot).

    A *transfer* starts with the first byte of a PDU when none is under way and ends with
    a PDU that completes a message: any PDU but P-DATA-TF, or a P-DATA-TF whose last PDV
    is the last fragment of its DIMSE message. While one is under way, by ``t`` seconds
    into it at least ``(t - grace_s) * min_rate`` bytes must have arrived: every PDU gets
    ``grace_s`` (``CXR_PDU_TIMEOUT_S``), and a message longer than that must keep
    ``min_rate`` bytes/s (``CXR_MIN_TRANSFER_RATE``) on average. Idle time between
    messages is the network timeout's (``CXR_NETWORK_TIMEOUT_S``)."""

    def __init__(self, grace_s: float, min_rate: float, io_timeout_s: float | None) -> None:
        self.grace_s = grace_s
        self.min_rate = min_rate
        self.io_timeout_s = io_timeout_s
        self.started: float | None = None
        self.received = 0
        self.pdu_type: int | None = None  # set between a PDU's header and its body

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()
            self.received = 0

    def remaining(self) -> float:
        """Seconds left before the transfer is too slow (may be negative)."""
        assert self.started is not None
        return self.started + self.grace_s + self.received / self.min_rate - time.monotonic()

    def pdu_done(self, pdu_type: int | None, body: bytes | bytearray) -> None:
        if pdu_type != 0x04 or _ends_message(body):
            self.started = None


def _ends_message(body: bytes | bytearray) -> bool:
    """True when the last PDV of a P-DATA-TF body is the last fragment of a message
    (PS3.8 E.2: Message Control Header bit 1)."""
    pos = 0
    last = False
    while pos + 6 <= len(body):
        (length,) = struct.unpack(">L", body[pos : pos + 4])
        last = bool(body[pos + 5] & 0x02)
        pos += 4 + max(length, 2)
    return last


_NO_PACE = object()


def _pace(sock: AssociationSocket, raw: socket.socket) -> Pace | None:
    pace: Any = getattr(sock, "_cxr_pace", None)
    if pace is None:
        assoc: Any = getattr(sock, "_assoc", None)
        policy: Any = getattr(getattr(assoc, "_server", None), "policy", None)
        grace = getattr(policy, "pdu_timeout_s", None)
        rate = getattr(policy, "min_transfer_rate", None)
        pace = Pace(grace, rate, raw.gettimeout()) if grace and rate else _NO_PACE
        sock._cxr_pace = pace  # type: ignore[attr-defined]
    return pace if isinstance(pace, Pace) else None


def _peer(sock: AssociationSocket) -> str:
    assoc: Any = getattr(sock, "_assoc", None)
    try:
        return str(assoc.requestor.address)[:64]
    except (AttributeError, ValueError):
        return "?"


def _too_slow(self: AssociationSocket, raw: socket.socket, pace: Pace) -> None:
    assert pace.started is not None
    elapsed = time.monotonic() - pace.started
    logger.warning(
        "peer %s too slow: %d bytes of a PDU or message in %.0f s (at least %g bytes/s "
        "after %g s: CXR_MIN_TRANSFER_RATE, CXR_PDU_TIMEOUT_S): closing the connection",
        _peer(self),
        pace.received,
        elapsed,
        pace.min_rate,
        pace.grace_s,
    )
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the socket (fewer if it closes, or if the peer is too slow: see
    :class:`Pace`; the connection is then shut down), in reads of up to READ_CHUNK."""
    bound = pdu_length_bound(_offered_max_length(self))
    if bound is not None and nr_bytes > bound:
        logger.warning(
            "peer %s announced a %d-byte PDU, more than the %d bytes allowed: closing",
            _peer(self),
            nr_bytes,
            bound,
        )
        raise ConnectionError("PDU longer than the Maximum Length offered")
    sock = cast(socket.socket, self.socket)
    pace = _pace(self, sock)
    header = pace is not None and pace.pdu_type is None
    if pace is not None:
        pace.begin()
    # Bounded above (at most ~2x the offered PDU size): one buffer. Unbounded: grow with
    # what arrives.
    buffer = bytearray(nr_bytes if bound is not None else min(nr_bytes, READ_CHUNK))
    got = 0
    while got < nr_bytes:
        if len(buffer) < min(nr_bytes, got + READ_CHUNK):
            buffer.extend(bytes(min(nr_bytes, got + READ_CHUNK) - len(buffer)))
        if pace is not None:
            left = pace.remaining()
            if left <= 0:
                _too_slow(self, sock, pace)
                break
            sock.settimeout(left if pace.io_timeout_s is None else min(left, pace.io_timeout_s))
        try:
            with memoryview(buffer) as view:
                n = sock.recv_into(view[got:], min(nr_bytes - got, READ_CHUNK))
        except TimeoutError:
            if pace is not None and pace.remaining() <= 0:
                _too_slow(self, sock, pace)
                break
            raise
        if not n:  # the connection was closed: what arrived so far
            break
        got += n
        if pace is not None:
            pace.received += n
    del buffer[got:]
    if pace is not None:
        # Writes (our answers) keep the plain network timeout, not what was left here.
        with contextlib.suppress(OSError):
            sock.settimeout(pace.io_timeout_s)
        if header:
            pace.pdu_type = buffer[0] if len(buffer) == 6 else None
            if len(buffer) < 6:
                pace.started = None
        else:
            pace.pdu_done(pace.pdu_type, buffer)
            pace.pdu_type = None
    return buffer


def bounded_fast_reads() -> None:
    """Install :func:`_recv` as pynetdicom's socket read (idempotent, process-wide)."""
    if getattr(AssociationSocket.recv, "_cxr_fast", False):
        return
    _recv._cxr_fast = True  # type: ignore[attr-defined]
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
