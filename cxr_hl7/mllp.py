"""MLLP (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 Appendix C): a message travels as
``0x0B`` + message + ``0x1C 0x0D`` over plain TCP, and the receiver answers the same way
with its acknowledgement on the same connection.

:func:`exchange` sends one framed message and waits for one framed answer, every wait
bounded by ``timeout_s``: no answer, a closed connection, an answer that is not framed or
larger than :data:`MAX_ANSWER_BYTES` is an :class:`~cxr_hl7.errors.Hl7DeliveryError`
(worth retrying; the receiver may or may not hold the message, so a retry sends the same
message control id and the receiver can recognise it). No logging here: the caller logs
the control id and destination, never the message (it carries the patient's name).
"""

from __future__ import annotations

import socket
import time

from cxr_hl7.destinations import Hl7Destination
from cxr_hl7.errors import Hl7DeliveryError

__all__ = ["END_BLOCK", "MAX_ANSWER_BYTES", "START_BLOCK", "exchange", "frame", "unframe"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: An acknowledgement is a few hundred bytes; anything this large is not one.
MAX_ANSWER_BYTES = 1 << 20


def frame(message: str) -> bytes:
    """``message`` (segments separated by ``\\r``) as one MLLP block, UTF-8 encoded."""
    data = message.encode("utf-8")
    if START_BLOCK in data or b"\x1c" in data:
        raise ValueError("an HL7 message may not contain the MLLP block characters 0x0B, 0x1C")
    return START_BLOCK + data + END_BLOCK


def unframe(block: bytes) -> str:
    """The message inside one MLLP block (``0x0B ... 0x1C 0x0D``); ValueError otherwise."""
    if not block.startswith(START_BLOCK) or not block.endswith(END_BLOCK):
        raise ValueError("not an MLLP block (0x0B ... 0x1C 0x0D)")
    try:
        return block[1 : -len(END_BLOCK)].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the MLLP block is not UTF-8 text") from None


def _read_block(sock: socket.socket, deadline: float, where: str) -> bytes:
    buffer = bytearray()
    while True:
        end = buffer.find(END_BLOCK)
        if end >= 0:
            start = buffer.find(START_BLOCK)
            if start < 0 or start > end:
                raise Hl7DeliveryError(where, "answer is not MLLP-framed (no 0x0B start block)")
            return bytes(buffer[start : end + len(END_BLOCK)])
        if len(buffer) > MAX_ANSWER_BYTES:
            raise Hl7DeliveryError(where, f"answer larger than {MAX_ANSWER_BYTES} bytes")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hl7DeliveryError(where, "no acknowledgement within the timeout")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise Hl7DeliveryError(where, "no acknowledgement within the timeout") from None
        except OSError as exc:
            raise Hl7DeliveryError(
                where, f"connection lost before an acknowledgement ({type(exc).__name__})"
            ) from None
        if not chunk:
            what = "an incomplete answer" if buffer else "no acknowledgement"
            raise Hl7DeliveryError(where, f"connection closed by the receiver with {what}")
        buffer.extend(chunk)


def exchange(destination: Hl7Destination, message: str, timeout_s: float) -> str:
    """Send ``message`` to ``destination`` and return the receiver's answer (unframed
    text). Connecting, sending and waiting for the answer each end within ``timeout_s``."""
    where = str(destination)
    data = frame(message)
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((destination.host, destination.port), timeout=timeout_s)
    except TimeoutError:
        raise Hl7DeliveryError(where, "connection timed out") from None
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else None
        raise Hl7DeliveryError(
            where, reason or f"cannot connect ({type(exc).__name__}: {exc.strerror or exc})"
        ) from None
    with sock:
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(data)
        except TimeoutError:
            raise Hl7DeliveryError(where, "sending timed out") from None
        except OSError as exc:
            raise Hl7DeliveryError(
                where, f"connection lost while sending ({type(exc).__name__})"
            ) from None
        block = _read_block(sock, deadline, where)
    try:
        return unframe(block)
    except ValueError as exc:
        raise Hl7DeliveryError(where, f"unreadable answer: {exc}") from None
