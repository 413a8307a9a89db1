"""The image size a compressed frame's own codestream declares, read before decoding.

A decoder allocates what the codestream says, not what the DICOM header says: a
141-byte JPEG 2000 codestream declaring 20000 x 20000 inside a 64 x 64 CR made a worker
grow by 1.9 GB before failing (issue 20). :func:`read_codestream_size` reads the frame
header of JPEG (SOF, the JPEG-LS SOF55 included) and JPEG 2000 / HTJ2K (SIZ) from the
first bytes of a frame; :mod:`cxr_imaging.limits` compares it with Rows, Columns and
SamplesPerPixel before anything decodes it. Pure: bytes in, numbers out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

__all__ = ["JPEG_FAMILY", "J2K_FAMILY", "CodestreamSize", "read_codestream_size"]

#: Transfer syntaxes whose frames are JPEG (ISO 10918, 14495) codestreams.
JPEG_FAMILY: Final = frozenset(
    str(u)
    for u in (
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
    )
)
#: Transfer syntaxes whose frames are JPEG 2000 (ISO 15444) codestreams.
J2K_FAMILY: Final = frozenset(
    str(u) for u in (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
)

#: How much of a frame is searched for its frame header.
HEADER_SEARCH_BYTES: Final = 1 << 20

# JPEG Start Of Frame markers: C0-CF except DHT (C4), JPG (C8), DAC (CC); F7 = JPEG-LS.
_SOF: Final = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length
_SOC_SIZ: Final = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class CodestreamSize:
    """What a frame's codestream declares: ``kind`` is "JPEG" or "JPEG 2000"."""

    kind: str
    rows: int
    columns: int
    components: int


def _jpeg(data: bytes) -> CodestreamSize | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            segment = data[pos + 4 : pos + 2 + length]
            if len(segment) < 6:
                return None
            _precision, rows, columns, components = struct.unpack(">BHHB", segment[:6])
            return CodestreamSize("JPEG", rows, columns, components)
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k(data: bytes) -> CodestreamSize | None:
    # A bare codestream starts with SOC + SIZ; a JP2 file (not DICOM-conformant, but
    # seen) holds one in its jp2c box: look for the pair.
    at = data.find(_SOC_SIZ)
    if at < 0:
        return None
    siz = data[at + 4 : at + 4 + 38]
    if len(siz) < 38:
        return None
    # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, *_tiles, csiz = struct.unpack(">HHIIIIIIIIH", siz)
    return CodestreamSize("JPEG 2000", ysiz - yosiz, xsiz - xosiz, csiz)


def read_codestream_size(transfer_syntax_uid: str, frame_start: bytes) -> CodestreamSize | None:
    """The size the codestream at the start of a frame declares; None when
    ``transfer_syntax_uid`` has no codestream header we read (RLE, native) or when none
    is found in ``frame_start`` (a corrupt or hostile frame: the caller refuses it)."""
    data = bytes(frame_start[:HEADER_SEARCH_BYTES])
    if transfer_syntax_uid in JPEG_FAMILY:
        return _jpeg(data)
    if transfer_syntax_uid in J2K_FAMILY:
        return _j2k(data)
    return None


def has_codestream_header(transfer_syntax_uid: str) -> bool:
    """True for the transfer syntaxes :func:`read_codestream_size` reads."""
    return transfer_syntax_uid in JPEG_FAMILY or transfer_syntax_uid in J2K_FAMILY
