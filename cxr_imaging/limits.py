"""Limits on what a DICOM instance may declare and contain, checked before any decode.

Poison files (issue 12, defects 5, 6, 7) are refused from their header, with bounded
memory, and with a reason staff can act on. Pure: no database, no queue, no settings
read here; the caller passes a :class:`DecodeLimits` (``settings.decode_limits()``; the
limits, their defaults and meanings are declared once, in :mod:`cxr_common.limits`).

Which check runs where
----------------------
Listener, in the C-STORE handler before answering (no decode, bounded memory):
    :func:`check_instance` on the staged file, in place of
    ``dcmread(path, stop_before_pixels=True)`` (which inflates a Deflated data set
    whole: defect 5). It reads the header (:func:`read_header`), refuses absurd or
    over-limit dimensions (:func:`check_declared_size`, defect 6), counts a Deflated
    data set's inflated length, and refuses missing, empty or truncated Pixel Data
    (:func:`check_uncompressed_length` and a cut encapsulated stream, defect 7). It
    returns the header, so the handler takes its UIDs from ``header.dataset``.
    Refused: answer ``exc.store_status`` with ``exc.error_comment``; nothing stored.
Worker, before decoding:
    :func:`read_checked_dataset` in place of ``dcmread``: the same checks, then the
    whole data set (a Deflated one inflated only once its length is known to fit).
Worker, after ``decode_dataset``:
    :func:`check_not_blank` (pure numpy): a blank or constant frame is not scored.
Worker outcome for every refusal: ``failed`` with ``exc.reason`` (permanent, never
retried; BlankImageError too: the header says chest radiograph, the pixels hold nothing).

Errors (all :class:`~cxr_imaging.errors.ImagingError`)::

    ImagingError
    └── InputRefusedError          .reason: what is wrong and what to do (no patient data)
        │                          .store_status, .error_comment (<= 64 chars)
        ├── PixelDataLengthError   0xC220  Pixel Data missing, 0-length, shorter than
        │                                  declared (truncated transfer), cut mid-fragment
        ├── DeclaredSizeError      0xC221  Rows, Columns, NumberOfFrames, SamplesPerPixel,
        │   │                              BitsAllocated/BitsStored absurd or over a limit
        │   └── CodestreamSizeError        the JPEG / JPEG 2000 codestream declares another
        │                                  size than the header (issue 20)
        ├── InflatedSizeError      0xC222  Deflated data set inflates past max_inflated_bytes
        ├── HeaderSizeError        0xC223  more than max_header_bytes before Pixel Data
        │   │                              (any transfer syntax; inflated when Deflated)
        │   └── HeaderStructureError       more than max_header_items sequence items,
        │                                  max_header_elements elements or
        │                                  max_sequence_depth nesting (pre-scan, issue 20)
        └── BlankImageError        (worker only) decoded frame of (near-)zero dynamic range
    UndecodableError               not DICOM Part 10 / header unparseable: the listener's
                                   existing 0xC210

C-STORE status. Every refusal is a failure in PS3.4 Table B.2-1's "Error: Cannot
understand" range (C000-CFFF), next to the listener's 0xC210 (undecodable data set),
with the short reason in Error Comment (0000,0902): the handler returns a status
``Dataset`` with ``Status = exc.store_status`` and ``ErrorComment = exc.error_comment``.
Distinct codes tell the refusals apart in a modality's log. Why not the others:
0xA900 "Data Set does not match SOP Class" says the object violates its IOD (the
listener uses it for a SOP Class/Instance that differs from the request); a truncated
transfer is not that: the modality's copy is fine and a resend of it succeeds.
0xA7xx "Refused: Out of Resources" invites automatic retries of the same object, which
for a bomb means forever. Any failure (not success, not a warning) leaves the instance
unsent in the modality's queue, so it is resent or shown to its operator (defect 7).

Wiring
------
``cxr_ingest/header.py`` ``read_received`` (the one parse of a received file)::

    header = check_instance(path, limits, exempt=is_our_own_object)
    # InputRefusedError -> a RefusalCode by exc.store_status (cxr_ingest.core._read);
    # the C-STORE handler answers its status with exc.error_comment
    ds = header.dataset                            # everything before Pixel Data + file_meta

``worker/pipeline.py`` ``ScoringRuntime._score``::

    try:
        ds = read_checked_dataset(data, limits)    # replaces pydicom.dcmread(BytesIO(data))
    except InputRefusedError as exc:
        return self._fail(job, exc.reason)
    except ImagingError as exc:
        return self._fail(job, f"unreadable DICOM ({exc}); resend the study")
    ...
    image = decode_dataset(ds)
    check_not_blank(image.pixels, limits)          # except InputRefusedError -> _fail(reason)

Memory. A Deflated data set is inflated in pieces of at most 1 MiB; only the part
before Pixel Data is kept (at most ``max_header_bytes``), the rest is counted and
dropped, stopping as soon as ``max_inflated_bytes`` is passed; a Pixel Data element
that itself declares more is refused without inflating it. Refusing four 1 MiB files
that inflate to 1 GiB and a 20000 x 20000 RLE takes a process to 58 MB peak RSS
(``pydicom.dcmread(..., stop_before_pixels=True)`` of one of them: 2.1 GB).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar, Final, cast

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cxr_common.limits import DecodeLimits, MiB
from cxr_imaging.codestream import (
    HEADER_SEARCH_BYTES,
    has_codestream_header,
    read_codestream_size,
)
from cxr_imaging.errors import ImagingError, UndecodableError

__all__ = [
    "STATUS_DECLARED_SIZE",
    "STATUS_HEADER_SIZE",
    "STATUS_INFLATED_SIZE",
    "STATUS_PIXEL_DATA_LENGTH",
    "BlankImageError",
    "DeclaredSizeError",
    "DecodeLimits",
    "Header",
    "CodestreamSizeError",
    "HeaderSizeError",
    "HeaderStructureError",
    "InflatedSizeError",
    "InputRefusedError",
    "PixelDataElement",
    "PixelDataLengthError",
    "Source",
    "check_codestream",
    "check_declared_size",
    "check_instance",
    "check_not_blank",
    "check_uncompressed_length",
    "dynamic_range",
    "expected_pixel_data_length",
    "is_blank_or_constant",
    "read_checked_dataset",
    "read_header",
]

#: C-STORE statuses (PS3.4 Table B.2-1 "Error: Cannot understand", C000-CFFF).
STATUS_PIXEL_DATA_LENGTH: Final = 0xC220
STATUS_DECLARED_SIZE: Final = 0xC221
STATUS_INFLATED_SIZE: Final = 0xC222
STATUS_HEADER_SIZE: Final = 0xC223

#: Transfer syntaxes whose Pixel Data is native (not encapsulated). Deflate compresses
#: the whole data set, but the pixels inside it are native.
NATIVE_TRANSFER_SYNTAXES: Final = frozenset(
    {
        str(ImplicitVRLittleEndian),
        str(ExplicitVRLittleEndian),
        str(ExplicitVRBigEndian),
        str(DeflatedExplicitVRLittleEndian),
    }
)

_PIXEL_TAGS: Final = {
    0x7FE00010: "PixelData",
    0x7FE00009: "DoubleFloatPixelData",
    0x7FE00008: "FloatPixelData",
}
_UNDEFINED: Final = 0xFFFFFFFF
_INFLATE_IN: Final = 64 * 1024  # compressed bytes read at a time
_INFLATE_OUT: Final = 1 * MiB  # most inflated bytes produced by one zlib call
_ALLOWED_BITS: Final = (1, 8, 16, 32)
_ALLOWED_SAMPLES: Final = (1, 3)
_BLANK_SAMPLE: Final = 1_000_000  # pixels looked at by the blank check (strided)
BLANK_PERCENTILES: Final = (0.5, 99.5)

#: The default limits (``cxr_common.limits`` declares them).
_DEFAULTS: Final = DecodeLimits()

#: What a check reads from: a path, the file's bytes, or a binary file positioned at 0.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


class InputRefusedError(ImagingError):
    """An instance refused by a limit. ``reason`` is for staff (no patient data);
    ``store_status`` is the C-STORE failure status the listener answers."""

    store_status: ClassVar[int] = 0xC000

    def __init__(self, reason: str, comment: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self._comment = comment or reason

    @property
    def error_comment(self) -> str:
        """A short form of the reason for Error Comment (0000,0902): LO, at most 64
        ASCII characters, no backslash."""
        text = self._comment.encode("ascii", "replace").decode("ascii").replace("\\", "/")
        return text if len(text) <= 64 else text[:61] + "..."


class InflatedSizeError(InputRefusedError):
    """A Deflated data set inflates past ``max_inflated_bytes`` (a deflate bomb)."""

    store_status: ClassVar[int] = STATUS_INFLATED_SIZE


class HeaderSizeError(InputRefusedError):
    """The data set holds more than ``max_header_bytes`` before Pixel Data."""

    store_status: ClassVar[int] = STATUS_HEADER_SIZE


class HeaderStructureError(HeaderSizeError):
    """The header holds more sequence items or data elements, or nests sequences deeper,
    than the limits allow (found by the pre-scan, before pydicom builds objects)."""


class DeclaredSizeError(InputRefusedError):
    """The header declares an image that is absurd or larger than the limits."""

    store_status: ClassVar[int] = STATUS_DECLARED_SIZE


class CodestreamSizeError(DeclaredSizeError):
    """A compressed frame's own codestream (JPEG SOF, JPEG 2000 SIZ) declares another
    size than the header, or has no frame header where one must be."""


class PixelDataLengthError(InputRefusedError):
    """Pixel Data missing, empty, or shorter than the header declares (truncated)."""

    store_status: ClassVar[int] = STATUS_PIXEL_DATA_LENGTH


class BlankImageError(InputRefusedError):
    """The decoded frame is blank or constant (worker only)."""


@dataclass(frozen=True)
class PixelDataElement:
    """The Pixel Data element's header as found in the stream, its value left unread.

    ``declared_length`` is the element's Value Length (None: undefined, encapsulated);
    ``present_length`` the bytes actually there (never more than a defined length).
    For a Deflated data set both count inflated bytes.
    """

    keyword: str
    vr: str | None
    declared_length: int | None
    present_length: int
    #: Encapsulated only: the fragments (items after the Basic Offset Table), their
    #: bytes, and the first bytes of the first frame (for its codestream header).
    fragments: int = 0
    fragment_bytes: int = 0
    frame_start: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Header:
    """What :func:`read_header` found: everything before Pixel Data, with ``file_meta``."""

    dataset: Dataset
    transfer_syntax_uid: str
    pixel_data: PixelDataElement | None
    #: The whole inflated data set length (Deflated only; None otherwise).
    inflated_length: int | None = None


# ---------------------------------------------------------------------------------------
# Bounded inflate


class _Inflater:
    """A read-only, seekable view of a raw deflate stream, inflated on demand.

    Keeps what it inflated (pydicom seeks back while parsing) up to ``keep_limit``;
    :meth:`drain` counts the rest without keeping it. Both stop with
    :class:`InflatedSizeError` once ``total_limit`` inflated bytes are passed.
    """

    name = "<deflated data set>"

    def __init__(self, raw: BinaryIO, *, keep_limit: int, total_limit: int) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._pos = 0
        self._total = 0
        self._keep_limit = keep_limit
        self._total_limit = total_limit

    def _next(self) -> bytes:
        """The next piece of inflated output (at most 1 MiB); b"" at the end."""
        try:
            while not self._z.eof:
                data = self._z.unconsumed_tail or self._raw.read(_INFLATE_IN)
                out = self._z.decompress(data, _INFLATE_OUT)
                if out or not data:  # not data: end of input, out: pending output drained
                    return out
            return b""
        except zlib.error as exc:
            raise UndecodableError(f"Deflated data set is corrupt ({exc})") from exc

    def _count(self, n: int) -> None:
        self._total += n
        if self._total > self._total_limit:
            raise _inflated_error(self._total_limit)

    def _fill(self, end: int) -> None:
        while len(self._buf) < end:
            piece = self._next()
            if not piece:
                return
            self._count(len(piece))
            self._buf += piece
            if len(self._buf) > self._keep_limit:
                raise _header_error(self._keep_limit)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise io.UnsupportedOperation("unbounded read of a deflated stream")
        self._fill(self._pos + n)
        with memoryview(self._buf) as view:  # one copy, not a slice and then a copy
            out = bytes(view[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            raise io.UnsupportedOperation("seek from the end of a deflated stream")
        self._pos = max(self._pos, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def drain(self) -> int:
        """Inflate the rest, keeping nothing; the whole inflated length."""
        while piece := self._next():
            self._count(len(piece))
        return self._total


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


def _header_error(limit: int) -> HeaderSizeError:
    return HeaderSizeError(
        f"the data set holds more than {_mib(limit)} before Pixel Data (decode limit "
        "max_header_bytes): check the sending modality",
        f"over {_mib(limit)} before Pixel Data",
    )


def _inflated_error(limit: int) -> InflatedSizeError:
    return InflatedSizeError(
        f"Deflated data set inflates to more than {_mib(limit)} (decode limit "
        "max_inflated_bytes): a deflate bomb or a corrupt export; check the sending modality",
        f"Deflated data set inflates past {_mib(limit)} (deflate bomb?)",
    )


# ---------------------------------------------------------------------------------------
# Header


def _open(source: Source) -> tuple[BinaryIO, bool]:
    """A binary file for ``source`` and whether this module must close it."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source), True
    if isinstance(source, str | os.PathLike):
        return open(Path(source), "rb"), True  # closed by _read_header
    return source, False


def _size(fp: BinaryIO) -> int:
    here = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    fp.seek(here)
    return end


@dataclass(frozen=True)
class _Fragments:
    complete: bool
    count: int = 0
    total: int = 0
    frame_start: bytes = b""


def _walk_fragments(fp: BinaryIO, start: int, end: int, little: bool, max_items: int) -> _Fragments:
    """Walk encapsulated Pixel Data from ``start``: whole items up to its Sequence
    Delimitation Item before ``end`` (a cut transfer stops mid-fragment), how many
    fragments follow the Basic Offset Table and their bytes, and the first
    :data:`~cxr_imaging.codestream.HEADER_SEARCH_BYTES` of the first frame. More than
    ``max_items`` items is refused (pydicom would hold every one)."""
    fmt = "<HHL" if little else ">HHL"
    pos = start
    count = total = 0
    head = bytearray()
    first = True
    while pos + 8 <= end:
        fp.seek(pos)
        group, elem, length = struct.unpack(fmt, fp.read(8))
        tag = group << 16 | elem
        if tag == 0xFFFEE0DD:
            return _Fragments(True, count, total, bytes(head))
        if tag != 0xFFFEE000 or length == _UNDEFINED:
            return _Fragments(False)
        if first:
            first = False  # the Basic Offset Table
        else:
            count += 1
            total += length
            if count > max_items:
                raise _structure_error(f"more than {max_items:,} Pixel Data fragments", max_items)
            if len(head) < HEADER_SEARCH_BYTES:
                head += fp.read(min(length, HEADER_SEARCH_BYTES - len(head)))
        pos += 8 + length
    # Out of bytes before the delimiter (pydicom's value of Pixel Data holds none).
    return _Fragments(False, count, total, bytes(head))


# ---------------------------------------------------------------------------------------
# Structure pre-scan

#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD


def _structure_error(what: str, limit: int) -> HeaderStructureError:
    return HeaderStructureError(
        f"the header holds {what} (decode limits max_header_items, max_header_elements, "
        "max_sequence_depth): a hostile or corrupt file; check the sending modality",
        f"header structure: {what}",
    )


def _valid_vr(vr: bytes) -> bool:
    return len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90


@dataclass
class _Level:
    """One open level of the pre-scan: a data set (the top one, or an item) or a
    sequence (or encapsulated fragments: ``fragments``)."""

    sequence: bool
    end: int | None  # None: undefined length, ends at its delimiter
    implicit: bool
    little: bool
    fragments: bool = False
    first: bool = True  # data set: no element read yet (pydicom guesses the VR form)


def _prescan(fp: BinaryIO, implicit: bool, little: bool, limits: DecodeLimits) -> None:
    """Walk the data set's raw tags and lengths up to top-level Pixel Data, iteratively,
    counting items, elements, nesting and bytes; refuse past a limit before pydicom
    builds a single object (its sequence reader costs about 1 kB per item: 2 million
    empty items took a listener to 2.8 GB). Leaves ``fp`` where it was.

    Sequences are followed as pydicom would follow them: SQ, any undefined length, and
    UN (or implicit VR) values that start with an item tag. Stops quietly at the end of
    the stream or where the bytes are malformed (pydicom then judges them, within the
    limits already counted); raises :class:`HeaderStructureError` or
    :class:`HeaderSizeError`."""
    start = fp.tell()
    stack = [_Level(False, None, implicit, little)]
    items = elements = depth = 0
    try:
        while stack:
            level = stack[-1]
            pos = fp.tell()
            if pos - start > limits.max_header_bytes:
                raise _header_error(limits.max_header_bytes)
            if level.end is not None and pos >= level.end:
                stack.pop()
                depth -= level.sequence
                continue
            head = fp.read(8)
            if len(head) < 8:
                return
            e = "<" if level.little else ">"
            group, elem = struct.unpack(e + "HH", head[:4])
            tag = group << 16 | elem
            if level.sequence:
                if tag == _SEQUENCE_END:
                    stack.pop()
                    depth -= 1
                    continue
                if tag != _ITEM:
                    return
                (length,) = struct.unpack(e + "L", head[4:])
                items += 1
                if items > limits.max_header_items:
                    raise _structure_error(
                        f"more than {limits.max_header_items:,} sequence items",
                        limits.max_header_items,
                    )
                if level.fragments:
                    if length == _UNDEFINED:
                        return
                    fp.seek(length, io.SEEK_CUR)
                    continue
                end = None if length == _UNDEFINED else fp.tell() + length
                stack.append(_Level(False, end, level.implicit, level.little))
                continue
            if tag == _ITEM_END:
                if len(stack) == 1:
                    return
                stack.pop()
                continue
            if len(stack) == 1 and tag >= 0x7FE00008:
                return  # Pixel Data: read_dataset stops here too
            if tag in (_ITEM, _SEQUENCE_END):
                return
            if level.first:
                level.first = False
                if not level.implicit and not _valid_vr(head[4:6]):
                    level.implicit = True  # pydicom switches to implicit VR as well
            elements += 1
            if elements > limits.max_header_elements:
                raise _structure_error(
                    f"more than {limits.max_header_elements:,} data elements",
                    limits.max_header_elements,
                )
            vr: bytes | None
            if level.implicit:
                vr = None
                (length,) = struct.unpack(e + "L", head[4:])
            else:
                vr = head[4:6]
                if not _valid_vr(vr):
                    return
                if vr in _LONG_VRS:
                    extra = fp.read(4)
                    if len(extra) < 4:
                        return
                    (length,) = struct.unpack(e + "L", extra)
                else:
                    (length,) = struct.unpack(e + "H", head[6:])
            value_at = fp.tell()
            sequence: _Level | None = None
            if length == _UNDEFINED:
                if vr in (b"OB", b"OW"):
                    sequence = _Level(True, None, level.implicit, level.little, fragments=True)
                elif vr == b"UN":  # pydicom reads it as an implicit VR LE sequence
                    sequence = _Level(True, None, True, True)
                else:
                    sequence = _Level(True, None, level.implicit, level.little)
            else:
                bound = next((lv.end for lv in reversed(stack) if lv.end is not None), None)
                if bound is not None and value_at + length > bound:
                    # runs past its item or sequence: malformed (pydicom judges it); go on
                    # counting from the enclosing end, so nothing after it goes uncounted
                    fp.seek(bound)
                    continue
                if value_at + length - start > limits.max_header_bytes:
                    raise _header_error(limits.max_header_bytes)
                if vr == b"SQ":
                    sequence = _Level(True, value_at + length, level.implicit, level.little)
                elif vr in (None, b"UN") and length >= 8:
                    peek = fp.read(4)
                    fp.seek(value_at)
                    implicit_le = vr == b"UN" or level.little
                    item = b"\xfe\xff\x00\xe0" if implicit_le else b"\xff\xfe\xe0\x00"
                    if peek == item:
                        sequence = _Level(
                            True,
                            value_at + length,
                            True,
                            implicit_le if vr == b"UN" else level.little,
                        )
            if sequence is None:
                fp.seek(value_at + length)
                continue
            depth += 1
            if depth > limits.max_sequence_depth:
                raise _structure_error(
                    f"sequences nested more than {limits.max_sequence_depth} deep",
                    limits.max_sequence_depth,
                )
            stack.append(sequence)
    finally:
        fp.seek(start)


#: Called by :func:`_read_header` with the header and whether Pixel Data was found,
#: before a Deflated data set's remainder is inflated and counted.
_HeaderHook = Callable[[Dataset, bool], None]


def _read_header(source: Source, limits: DecodeLimits, before_count: _HeaderHook | None) -> Header:
    fp, owned = _open(source)
    try:
        return _parse_header(fp, limits, before_count)
    except (ImagingError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises a zoo of types on hostile bytes
        raise UndecodableError(
            f"DICOM header cannot be parsed ({type(exc).__name__}): resend the study"
        ) from exc
    finally:
        if owned:
            fp.close()


def _parse_header(fp: BinaryIO, limits: DecodeLimits, before_count: _HeaderHook | None) -> Header:
    read_preamble(fp, False)  # InvalidDicomError without the 128-byte preamble + DICM
    file_meta = FileMetaDataset(
        read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
    )
    raw_ts = file_meta.get("TransferSyntaxUID")
    if not raw_ts:
        raise UndecodableError("File Meta has no Transfer Syntax UID: resend the study")
    tsuid = UID(str(raw_ts))
    deflated = tsuid == DeflatedExplicitVRLittleEndian
    implicit = tsuid == ImplicitVRLittleEndian
    little = tsuid != ExplicitVRBigEndian
    stream: BinaryIO = fp
    inflater: _Inflater | None = None
    if deflated:
        inflater = _Inflater(
            fp, keep_limit=limits.max_header_bytes, total_limit=limits.max_inflated_bytes
        )
        stream = cast(BinaryIO, inflater)

    _prescan(stream, implicit, little, limits)
    found: list[tuple[int, str | None, int, int]] = []

    def at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
        position = stream.tell()
        if int(tag) < 0x7FE00008:
            # Refuse a huge element before pydicom reads it (top level; what nested
            # sequences hold is caught once read, or by the inflater's own bound).
            end = position if length == _UNDEFINED else position + length
            if end > limits.max_header_bytes:
                raise _header_error(limits.max_header_bytes)
            return False
        found[:] = [(int(tag), vr, length, position)]
        return True

    dataset = read_dataset(stream, implicit, little, stop_when=at_pixel_data)
    dataset.file_meta = file_meta
    has_pixel_data = bool(found) and found[0][0] in _PIXEL_TAGS
    if before_count is not None:
        before_count(dataset, has_pixel_data)

    inflated: int | None = None
    if inflater is not None:
        if has_pixel_data and found[0][2] != _UNDEFINED:
            # The element itself says it holds more than the limit: no need to inflate it.
            if found[0][3] + found[0][2] > limits.max_inflated_bytes:
                raise _inflated_error(limits.max_inflated_bytes)
        inflated = inflater.drain()
        end = inflated
    else:
        end = _size(fp)

    pixel: PixelDataElement | None = None
    if has_pixel_data:
        # stop_when runs with the stream at the value (or, in _is_implicit_vr's early
        # peek, just after tag and VR: the generator's later call overwrites that).
        tag, vr, length, value_at = found[0]
        remaining = max(end - value_at, 0)
        if length == _UNDEFINED:
            walked = _Fragments(True)
            if not deflated:
                walked = _walk_fragments(fp, value_at, end, little, limits.max_header_items)
            if not walked.complete:
                raise PixelDataLengthError(
                    "encapsulated Pixel Data ends before its last fragment (truncated "
                    "transfer): resend the study from the modality",
                    "Pixel Data fragments cut short (truncated): resend",
                )
            pixel = PixelDataElement(
                _PIXEL_TAGS[tag],
                vr,
                None,
                remaining,
                fragments=walked.count,
                fragment_bytes=walked.total,
                frame_start=walked.frame_start,
            )
        else:
            pixel = PixelDataElement(_PIXEL_TAGS[tag], vr, length, min(length, remaining))
    return Header(dataset, str(tsuid), pixel, inflated)


def read_header(source: Source, limits: DecodeLimits) -> Header:
    """Read File Meta and the data set up to (not including) Pixel Data, bounded.

    Every transfer syntax. Deflated: inflated in 1 MiB pieces, the header kept (at most
    ``max_header_bytes``), the rest counted and dropped: :class:`InflatedSizeError` as
    soon as ``max_inflated_bytes`` is passed. Unparseable input raises
    :class:`~cxr_imaging.errors.UndecodableError`. No limit on what the header declares:
    that is :func:`check_declared_size`.
    """
    return _read_header(source, limits, None)


# ---------------------------------------------------------------------------------------
# Declared size


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    bad = f"{keyword} invalid: check modality export"
    try:
        value = ds.get(keyword)
    except Exception as exc:  # a corrupt raw element fails on conversion
        raise DeclaredSizeError(
            f"{keyword} cannot be read: check the modality's export", bad
        ) from exc
    if value is None or value == "":
        if default is not None:
            return default
        raise DeclaredSizeError(
            f"{keyword} is missing: the image size is unknown; check the modality's export",
            f"{keyword} missing: check modality export",
        )
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise DeclaredSizeError(
            f"{keyword} is not a number: check the modality's export", bad
        ) from exc
    if not math.isfinite(number) or number != int(number):
        raise DeclaredSizeError(
            f"{keyword} is not a whole number: check the modality's export", bad
        )
    return int(number)


def _over(what: str, value: int, limit: int, setting: str) -> DeclaredSizeError:
    return DeclaredSizeError(
        f"{what} {value:,} exceeds the limit of {limit:,} (decode limit {setting}): "
        "check the modality's export, or raise the limit if the image is genuine",
        f"{setting} exceeded: {value} > {limit}",
    )


def check_declared_size(ds_header: Dataset, limits: DecodeLimits) -> int:
    """Refuse an image whose header declares an absurd or over-limit size, before any
    decode. Returns the native Pixel Data length in bytes the header implies.

    Reads Rows, Columns, NumberOfFrames (default 1), SamplesPerPixel, BitsAllocated
    (and BitsStored, which must not exceed it). Raises :class:`DeclaredSizeError`.
    """
    rows = _int(ds_header, "Rows")
    columns = _int(ds_header, "Columns")
    frames = _int(ds_header, "NumberOfFrames", 1)
    samples = _int(ds_header, "SamplesPerPixel", 1)
    bits = _int(ds_header, "BitsAllocated")
    for keyword, value in (("Rows", rows), ("Columns", columns), ("NumberOfFrames", frames)):
        if value < 1:
            raise DeclaredSizeError(
                f"{keyword} is {value}: the image is empty; check the modality's export",
                f"{keyword} {value}: check modality export",
            )
    if samples not in _ALLOWED_SAMPLES:
        raise DeclaredSizeError(
            f"SamplesPerPixel {samples} is not 1 (greyscale) or 3 (colour): "
            "check the modality's export",
            f"SamplesPerPixel {samples} not 1 or 3",
        )
    if bits not in _ALLOWED_BITS:
        raise DeclaredSizeError(
            f"BitsAllocated {bits} is not an image depth we decode (1, 8, 16 or 32): "
            "check the modality's export",
            f"BitsAllocated {bits} not 1, 8, 16 or 32",
        )
    stored = _int(ds_header, "BitsStored", bits)
    if not 1 <= stored <= bits:
        raise DeclaredSizeError(
            f"BitsStored {stored} does not fit BitsAllocated {bits}: check the modality's export",
            f"BitsStored {stored} > BitsAllocated {bits}",
        )
    if rows > limits.max_rows:
        raise _over("Rows", rows, limits.max_rows, "max_rows")
    if columns > limits.max_columns:
        raise _over("Columns", columns, limits.max_columns, "max_columns")
    if rows * columns > limits.max_pixels:
        raise _over(
            f"Rows x Columns {rows} x {columns} =", rows * columns, limits.max_pixels, "max_pixels"
        )
    if frames > limits.max_frames:
        raise _over("NumberOfFrames", frames, limits.max_frames, "max_frames")
    length = _native_length(rows, columns, frames, samples, bits, ds_header)
    if length > limits.max_decoded_bytes:
        raise _over("decoded size (bytes)", length, limits.max_decoded_bytes, "max_decoded_bytes")
    return length


def _native_length(
    rows: int, columns: int, frames: int, samples: int, bits: int, ds: Dataset
) -> int:
    values = rows * columns * frames * samples
    length = (values + 7) // 8 if bits == 1 else values * (bits // 8)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: two samples' worth per pixel
        length = length // 3 * 2
    return length


def expected_pixel_data_length(ds_header: Dataset) -> int:
    """Native Pixel Data length in bytes (without the odd-length pad byte) that Rows x
    Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated declare."""
    return _native_length(
        _int(ds_header, "Rows"),
        _int(ds_header, "Columns"),
        _int(ds_header, "NumberOfFrames", 1),
        _int(ds_header, "SamplesPerPixel", 1),
        _int(ds_header, "BitsAllocated"),
        ds_header,
    )


# ---------------------------------------------------------------------------------------
# Pixel Data length


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(value) if value else None


def check_uncompressed_length(ds_header: Dataset, pixel_data_length: int | None) -> None:
    """For native (uncompressed, incl. Deflated) transfer syntaxes, refuse Pixel Data
    shorter than Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated.

    ``pixel_data_length`` is the number of Pixel Data bytes actually present (None: no
    Pixel Data element). Longer is accepted (an odd length is padded by one byte;
    decoders ignore trailing bytes). 0 bytes or no element fails for every transfer
    syntax. Raises :class:`PixelDataLengthError`.
    """
    if pixel_data_length is None:
        raise PixelDataLengthError(
            "no Pixel Data in the data set: resend the study, and check the modality's export",
            "no Pixel Data: resend",
        )
    if pixel_data_length == 0:
        raise PixelDataLengthError(
            "Pixel Data is empty (0 bytes): resend the study from the modality",
            "Pixel Data empty (0 bytes): resend",
        )
    if _transfer_syntax(ds_header) not in NATIVE_TRANSFER_SYNTAXES:
        return
    expected = expected_pixel_data_length(ds_header)
    if pixel_data_length < expected:
        raise PixelDataLengthError(
            f"Pixel Data holds {pixel_data_length:,} of the {expected:,} bytes the header "
            "declares (truncated transfer): resend the study from the modality",
            f"Pixel Data truncated ({pixel_data_length} of {expected} bytes): resend",
        )


#: Encapsulated Pixel Data may exceed the native size it compresses by this factor (plus
#: :data:`_COMPRESSED_SLACK`): lossless JPEG of noise grows a little, never twice.
_COMPRESSED_FACTOR: Final = 2
_COMPRESSED_SLACK: Final = 64 * 1024
#: Native Pixel Data may run this far past the image (the pad byte; some exporters pad
#: to a block, e.g. pydicom's MR_small_padded.dcm, 128 bytes): nothing a decoder or a
#: worker's memory notices, unlike 64 MiB behind a 64 x 64 image.
_NATIVE_SLACK: Final = 64 * 1024


def check_not_longer(ds_header: Dataset, pixel: PixelDataElement) -> None:
    """Refuse Pixel Data longer than the image needs: native Pixel Data more than 64 kB
    past Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated, or
    encapsulated fragments holding more than twice that plus 64 kB. Every byte of it is
    read into memory by whoever decodes the file. Raises :class:`PixelDataLengthError`."""
    expected = expected_pixel_data_length(ds_header)
    if _transfer_syntax(ds_header) in NATIVE_TRANSFER_SYNTAXES:
        declared = pixel.declared_length
        if declared is not None and declared > expected + _NATIVE_SLACK:
            raise PixelDataLengthError(
                f"Pixel Data holds {declared:,} bytes, more than the {expected:,} the header "
                "declares (a hostile or corrupt file): check the sending modality",
                f"Pixel Data too long ({declared} > {expected} bytes)",
            )
        return
    bound = _COMPRESSED_FACTOR * expected + _COMPRESSED_SLACK
    if pixel.fragment_bytes > bound:
        raise PixelDataLengthError(
            f"compressed Pixel Data holds {pixel.fragment_bytes:,} bytes, more than twice the "
            f"{expected:,} bytes of the image it declares (a hostile or corrupt file): check "
            "the sending modality",
            f"compressed Pixel Data too long ({pixel.fragment_bytes} bytes)",
        )


def _check_frame_start(ds_header: Dataset, transfer_syntax_uid: str, frame_start: bytes) -> None:
    if not has_codestream_header(transfer_syntax_uid):
        return
    name = UID(transfer_syntax_uid).name
    size = read_codestream_size(transfer_syntax_uid, frame_start)
    if size is None:
        raise CodestreamSizeError(
            f"the first frame has no readable codestream header for {name} (no JPEG SOF / "
            "JPEG 2000 SIZ marker where it must be): a corrupt or hostile file; resend the "
            "study, and check the modality's export",
            "codestream header missing: corrupt frame",
        )
    rows = _int(ds_header, "Rows")
    columns = _int(ds_header, "Columns")
    samples = _int(ds_header, "SamplesPerPixel", 1)
    if (size.rows, size.columns, size.components) != (rows, columns, samples):
        raise CodestreamSizeError(
            f"codestream dimensions: the {size.kind} codestream declares {size.columns:,} x "
            f"{size.rows:,} pixels with {size.components} component(s), the DICOM header "
            f"{columns:,} x {rows:,} with {samples}: refused before decoding (a hostile or "
            "corrupt file); check the modality's export",
            f"codestream {size.columns}x{size.rows} != header {columns}x{rows}",
        )


def check_codestream(ds: Dataset) -> None:
    """For a data set already in memory (the decode path): refuse a first frame whose
    JPEG / JPEG 2000 codestream declares another size than Rows, Columns and
    SamplesPerPixel, before any decoder allocates it. Raises :class:`CodestreamSizeError`
    (nothing to check for native or RLE data)."""
    tsuid = _transfer_syntax(ds)
    if tsuid is None or not has_codestream_header(tsuid):
        return
    data = ds.get("PixelData")
    if not isinstance(data, bytes | bytearray):
        return
    walked = _walk_fragments(io.BytesIO(data), 0, len(data), True, len(data) // 8 + 2)
    _check_frame_start(ds, tsuid, walked.frame_start)


# ---------------------------------------------------------------------------------------
# Listener and worker entry points


def check_instance(
    source: Source, limits: DecodeLimits, *, exempt: Callable[[Dataset], bool] | None = None
) -> Header:
    """Every pre-decode check, in order, with bounded memory; returns the header.

    ``exempt`` (the listener's own result objects coming back) is called with the header
    before step 2; when it returns True the checks of steps 2 to 4 are skipped (the
    header is still read within the limits of step 1). It must not raise.

    1. :func:`read_header` (Deflated: header only, at most ``max_header_bytes``);
    2. :func:`check_declared_size`, before any further inflating;
    3. Deflated: the inflated length, counted in 1 MiB pieces, ``max_inflated_bytes``;
    4. :func:`check_uncompressed_length` with the bytes actually present (a cut
       encapsulated transfer is refused by step 1);
    5. :func:`check_not_longer`: no more Pixel Data than the image needs;
    6. encapsulated JPEG / JPEG 2000: the first frame's codestream declares the header's
       size (:class:`CodestreamSizeError`).

    Step 1 begins with a pre-scan of the raw tags and lengths (sequence items, elements,
    nesting, bytes) before pydicom builds any object (:class:`HeaderStructureError`).

    Raises an :class:`InputRefusedError` subclass, or ``UndecodableError`` for input
    that is not DICOM Part 10.
    """

    skipped: list[bool] = []

    def declared(ds: Dataset, has_pixel_data: bool) -> None:
        if exempt is not None and exempt(ds):
            skipped.append(True)
            return
        if not has_pixel_data:
            check_uncompressed_length(ds, None)
        check_declared_size(ds, limits)

    header = _read_header(source, limits, declared)
    if skipped:
        return header
    present = header.pixel_data.present_length if header.pixel_data is not None else None
    check_uncompressed_length(header.dataset, present)
    if header.pixel_data is not None:
        check_not_longer(header.dataset, header.pixel_data)
        if header.pixel_data.declared_length is None:
            _check_frame_start(
                header.dataset, header.transfer_syntax_uid, header.pixel_data.frame_start
            )
    return header


def read_checked_dataset(source: Source, limits: DecodeLimits) -> Dataset:
    """The whole data set, read only after :func:`check_instance` passed.

    For the worker: a Deflated data set is inflated whole only once its inflated length
    is known to be within ``max_inflated_bytes``. ``source`` should be bytes or a path
    (a file object is rewound to where it was).
    """
    if isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
        check_instance(source, limits)
        data: str | os.PathLike[str] | BinaryIO = (
            io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
        )
    else:
        here = source.tell()
        check_instance(source, limits)
        source.seek(here)
        data = source
    try:
        return dcmread(data)
    except Exception as exc:  # checked header, but pydicom may still refuse the body
        raise UndecodableError(
            f"DICOM data set cannot be parsed ({type(exc).__name__}): resend the study"
        ) from exc


# ---------------------------------------------------------------------------------------
# Blank or constant


def dynamic_range(pixels: npt.NDArray[np.generic]) -> float:
    """Spread between the 0.5th and 99.5th percentiles of the finite values of
    ``pixels`` (at most about a million of them, evenly strided). 0.0 when none."""
    flat = np.asarray(pixels).reshape(-1)
    step = max(1, flat.size // _BLANK_SAMPLE)
    sample = flat[::step].astype(np.float64, copy=False)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0
    lo, hi = np.percentile(sample, BLANK_PERCENTILES)
    return float(hi - lo)


def is_blank_or_constant(
    pixels: npt.NDArray[np.generic], min_dynamic_range: float = _DEFAULTS.min_dynamic_range
) -> bool:
    """True when a decoded frame (float, 0 to 1, as ``decode_dataset`` gives it) has
    (near-)zero dynamic range: all one value, or all but under 0.5 % of it."""
    return dynamic_range(pixels) < min_dynamic_range


def check_not_blank(pixels: npt.NDArray[np.generic], limits: DecodeLimits) -> None:
    """Raise :class:`BlankImageError` for a blank or constant decoded frame."""
    spread = dynamic_range(pixels)
    if spread < limits.min_dynamic_range:
        raise BlankImageError(
            f"blank or constant image (dynamic range {spread:.3f} < "
            f"{limits.min_dynamic_range:g}): check the modality's export",
            "blank or constant image",
        )
