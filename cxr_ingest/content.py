"""The content hash of a received instance, computed from the file or while it is written.

``content_sha256`` is what tells a resend (same hash: success, no second job) from a
conflict (another hash under one SOP Instance UID: refused). It covers what a sender
sent: the transfer syntax UID and the data set bytes after the File Meta (which the
receiving side writes itself). Two sends of one instance hash alike; any changed
element, pixel or transfer syntax hashes differently.

:class:`ContentHasher` computes the same digest from the bytes of a Part 10 file as they
are written (the listener's receive file), so ingest never reads the file again to hash
it; :func:`content_sha256` reads a file or stream (rows recorded before hashes were
kept, and the fallback when no digest came with the file).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

_CHUNK: Final = 1 << 20
#: Preamble, "DICM", then (0002,0000) UL 4 <group length> in explicit VR little endian.
_META_START: Final = b"DICM\x02\x00\x00\x00UL\x04\x00"
_META_HEAD: Final = 144
#: A File Meta longer than this is not hashed while written (real ones: ~200 bytes).
MAX_META_BYTES: Final = 64 * 1024
#: Explicit VR little endian VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TRANSFER_SYNTAX_TAG: Final = (0x0002, 0x0010)


@dataclass(frozen=True)
class ContentDigest:
    """A content hash and the transfer syntax UID it was computed with."""

    transfer_syntax_uid: str
    sha256: str


def _start_digest(transfer_syntax_uid: str | None) -> hashlib._Hash:
    return hashlib.sha256((transfer_syntax_uid or "").encode("ascii", "replace") + b"\0")


def content_sha256(source: Path | BinaryIO, transfer_syntax_uid: str | None) -> str:
    """sha256 of ``transfer_syntax_uid`` and the data set bytes after the File Meta of
    the Part 10 file ``source`` (a file without the usual File Meta start is hashed
    whole)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return content_sha256(handle, transfer_syntax_uid)
    digest = _start_digest(transfer_syntax_uid)
    start = 0
    head = source.read(_META_HEAD)
    if len(head) == _META_HEAD and head[128:140] == _META_START:
        start = _META_HEAD + struct.unpack("<L", head[140:144])[0]
    source.seek(start)
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def meta_transfer_syntax(meta: bytes) -> str | None:
    """The Transfer Syntax UID (0002,0010) of File Meta elements in explicit VR little
    endian (``meta`` starts at the first element after "DICM"), or None."""
    pos = 0
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        vr = meta[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(meta):
                return None
            length = struct.unpack_from("<L", meta, pos + 8)[0]
            value_at = pos + 12
        else:
            length = struct.unpack_from("<H", meta, pos + 6)[0]
            value_at = pos + 8
        if (group, element) == _TRANSFER_SYNTAX_TAG:
            value = meta[value_at : value_at + length]
            if len(value) != length:
                return None
            try:
                return value.rstrip(b"\0 ").decode("ascii") or None
            except UnicodeDecodeError:
                return None
        if group != 0x0002:
            return None
        pos = value_at + length
    return None


class ContentHasher:
    """:func:`content_sha256` of a Part 10 file, fed with its bytes in order as they are
    written. :meth:`digest` is None when the stream does not start with the usual File
    Meta (preamble, "DICM", group length, a Transfer Syntax UID): then hash the file."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._digest: hashlib._Hash | None = None
        self._transfer_syntax_uid: str | None = None
        self._failed = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed:
            return
        if self._digest is not None:
            self._digest.update(data)
            return
        self._head += data
        if len(self._head) < _META_HEAD:
            return
        if self._head[128:140] != _META_START:
            self._fail()
            return
        start = _META_HEAD + struct.unpack_from("<L", self._head, 140)[0]
        if start > MAX_META_BYTES:
            self._fail()
            return
        if len(self._head) < start:
            return
        syntax = meta_transfer_syntax(bytes(self._head[132:start]))
        if syntax is None:
            self._fail()
            return
        self._transfer_syntax_uid = syntax
        self._digest = _start_digest(syntax)
        self._digest.update(self._head[start:])
        self._head = bytearray()

    def _fail(self) -> None:
        self._failed = True
        self._head = bytearray()

    def digest(self) -> ContentDigest | None:
        """The digest of everything fed so far (None: see the class docstring)."""
        if self._digest is None or self._transfer_syntax_uid is None:
            return None
        return ContentDigest(self._transfer_syntax_uid, self._digest.copy().hexdigest())
