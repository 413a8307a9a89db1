"""A ``multipart/related`` request body read part by part into files, bounded (STOW-RS).

:func:`read_parts` consumes the body as it arrives (``request.stream()``) and writes each
part's content to its own temp file in ``folder`` (the storage's staging folder, so the
ingest core moves it into place with a rename): a part is never held in memory, and at
most ``max_bytes`` of body and ``max_parts`` parts are accepted before the request is
refused with 413. A malformed body (no opening boundary, no closing one, headers over
``max_header_bytes``) is refused with 400. On any refusal the files written so far are
removed.

Syntax (RFC 2046 5.1.1, RFC 2387): the body is ``--boundary``, then per part optional
transport padding and CRLF, header lines, an empty line, the content, and
``CRLF--boundary``; the last delimiter is followed by ``--``. Preamble and epilogue are
ignored.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["MultipartError", "Part", "media_type", "read_parts"]

#: Longest header block of one part.
MAX_HEADER_BYTES = 16 * 1024
#: RFC 2046: a boundary is 1 to 70 characters.
MAX_BOUNDARY = 70
#: How many leading bytes of each part ``head`` sees (a Part 10 preamble and 'DICM').
HEAD_BYTES = 132


class MultipartError(Exception):
    """The body is refused: ``status_code`` 400 (malformed) or 413 (too large)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass
class Part:
    """One body part: its content in ``path`` (``size`` bytes) and its lower-case headers."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0

    @property
    def content_type(self) -> str:
        """The part's media type, lower case, without parameters ('' when absent)."""
        return media_type(self.headers.get("content-type", ""))[0]


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, quotes
    removed) of a Content-Type value."""
    kind, *params = _split_params(value)
    parsed: dict[str, str] = {}
    for param in params:
        name, eq, raw = param.partition("=")
        if not eq:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        parsed[name.strip().lower()] = raw
    return kind.strip().lower(), parsed


def _split_params(value: str) -> list[str]:
    """Split on ';' outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return items


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MultipartError(400, "a part's headers are not ASCII") from exc
    for line in text.split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise MultipartError(400, "a part has a malformed header line")
        headers.setdefault(name.lower(), value.strip())
    return headers


class _Reader:
    """The state machine of :func:`read_parts`."""

    def __init__(
        self,
        boundary: bytes,
        folder: Path,
        max_parts: int,
        max_header_bytes: int,
        head: Callable[[bytes], bytes] | None,
    ):
        self.delimiter = b"\r\n--" + boundary
        self.head = head
        self.pending: bytearray | None = None  # a part's first bytes, until HEAD_BYTES
        self.folder = folder
        self.max_parts = max_parts
        self.max_header_bytes = max_header_bytes
        # A CRLF before the body lets the first delimiter match like every other one.
        self.buffer = bytearray(b"\r\n")
        self.state = "preamble"
        self.parts: list[Part] = []
        self.current: Part | None = None
        self.handle: BinaryIO | None = None

    def feed(self, data: bytes) -> None:
        if self.state == "done":
            return  # the epilogue
        self.buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance one state; False when more data is needed."""
        buf = self.buffer
        if self.state == "preamble":
            at = buf.find(self.delimiter)
            if at < 0:
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            del buf[: at + len(self.delimiter)]
            self.state = "delimiter"
            return True
        if self.state == "delimiter":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.state = "done"
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 256:
                    raise MultipartError(400, "a boundary line does not end with CRLF")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError(400, "text after a boundary (is the boundary right?)")
            del buf[: end + 2]
            self.state = "headers"
            return True
        if self.state == "headers":
            if buf.startswith(b"\r\n"):
                block, skip = b"", 2
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self.max_header_bytes:
                        raise MultipartError(400, "a part's headers are too long")
                    return False
                block, skip = bytes(buf[:end]), end + 4
            if len(block) > self.max_header_bytes:
                raise MultipartError(400, "a part's headers are too long")
            del buf[:skip]
            self._open(_headers(block))
            self.state = "body"
            return True
        if self.state == "body":
            assert self.handle is not None
            assert self.current is not None
            at = buf.find(self.delimiter)
            if at < 0:
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    self._write(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
                return False
            self._write(buf[:at])
            del buf[: at + len(self.delimiter)]
            self._flush_head()
            self.handle.close()
            self.handle = None
            self.state = "delimiter"
            return True
        return False

    def _open(self, headers: dict[str, str]) -> None:
        if len(self.parts) >= self.max_parts:
            raise MultipartError(413, f"more than {self.max_parts} parts in one request")
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".stow")
        self.handle = os.fdopen(fd, "wb")
        self.current = Part(Path(name), headers)
        self.parts.append(self.current)
        self.pending = bytearray() if self.head is not None else None

    def _write(self, data: bytearray) -> None:
        assert self.handle is not None
        assert self.current is not None
        if self.pending is not None:
            self.pending += data
            if len(self.pending) >= HEAD_BYTES:
                self._flush_head()
            return
        self.handle.write(data)
        self.current.size += len(data)

    def _flush_head(self) -> None:
        """Write a part's first bytes, as ``head`` returns them."""
        if self.pending is None or self.head is None:
            return
        data, self.pending = self.head(bytes(self.pending)), None
        assert self.handle is not None
        assert self.current is not None
        self.handle.write(data)
        self.current.size += len(data)

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
        for part in self.parts:
            with contextlib.suppress(OSError):
                part.path.unlink()


async def read_parts(
    chunks: AsyncIterator[bytes],
    boundary: str,
    folder: Path,
    *,
    max_bytes: int,
    max_parts: int,
    max_header_bytes: int = MAX_HEADER_BYTES,
    head: Callable[[bytes], bytes] | None = None,
) -> list[Part]:
    """Every part of the body, each in its own file in ``folder`` (the caller removes
    them). ``head`` is given each part's first :data:`HEAD_BYTES` bytes (fewer for a
    shorter part) and returns what to write in their place. Raises
    :class:`MultipartError` (the files are then removed) or ``OSError`` when ``folder``
    is not writable."""
    if not 1 <= len(boundary) <= MAX_BOUNDARY or not boundary.isascii():
        raise MultipartError(400, "the boundary parameter must be 1 to 70 ASCII characters")
    reader = _Reader(boundary.encode("ascii"), folder, max_parts, max_header_bytes, head)
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise MultipartError(413, f"the request body is larger than {max_bytes} bytes")
            reader.feed(chunk)
        if reader.state == "preamble":
            raise MultipartError(400, "no part found: the body never has '--' + the boundary")
        if reader.state != "done":
            raise MultipartError(400, "the body ends before the closing boundary ('--boundary--')")
    except BaseException:
        reader.discard()
        raise
    return reader.parts
