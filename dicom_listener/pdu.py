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

import logging
import socket
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


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the socket (fewer if it closes), in reads of up to READ_CHUNK."""
    bound = pdu_length_bound(_offered_max_length(self))
    if bound is not None and nr_bytes > bound:
        logger.warning(
            "peer announced a %d-byte PDU, more than the %d bytes allowed: closing",
            nr_bytes,
            bound,
        )
        raise ConnectionError("PDU longer than the Maximum Length offered")
    sock = cast(socket.socket, self.socket)
    if bound is None:  # nothing bounds the claim: grow with what arrives
        data = bytearray()
        while len(data) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(data), READ_CHUNK))
            if not chunk:  # the connection was closed: what arrived so far
                break
            data += chunk
        return data
    buffer = bytearray(nr_bytes)  # bounded above: at most ~2x the offered PDU size
    view = memoryview(buffer)
    got = 0
    while got < nr_bytes:
        n = sock.recv_into(view[got:], min(nr_bytes - got, READ_CHUNK))
        if not n:
            break
        got += n
    view.release()
    del buffer[got:]
    return buffer


def bounded_fast_reads() -> None:
    """Install :func:`_recv` as pynetdicom's socket read (idempotent, process-wide)."""
    if getattr(AssociationSocket.recv, "_cxr_fast", False):
        return
    _recv._cxr_fast = True  # type: ignore[attr-defined]
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
