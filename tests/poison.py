"""Build the poison files of issue 12 in code, small on disk (no patient data).

Every function writes a DICOM Part-10 file (128-byte preamble, ``DICM``, File Meta) to
``path`` and returns the path. All are Digital X-Ray (DX For Presentation) chest PA
instances, so that eligibility would let them through to decoding:

* :func:`deflate_bomb`: Deflated Explicit VR LE whose ~1 MiB body inflates to ~1 GiB
  of zeros (honest dimensions, lying dimensions, or the zeros in a private element
  before Pixel Data). Written by streaming: never more than 1 MiB of zeros in memory.
* :func:`rle_bomb`: RLE Lossless declaring 20000 x 20000 (about 6 MB on disk,
  400 MB decoded).
* :func:`truncated_pixel_data`: native Pixel Data shorter than Rows x Columns x bits
  (the element says so honestly, or the file is cut short mid-value).
* :func:`zero_length_pixel_data`, :func:`absurd_dimensions` (see :data:`ABSURD`),
  :func:`blank_frame`, :func:`constant_frame`.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from tests.dicom_factory import chest_like, make_dataset, write

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
GIB = 1 << 30
MIB = 1 << 20

#: Header overrides that make an absurd image, and a fragment of the refusal reason.
ABSURD: dict[str, tuple[dict[str, int], str]] = {
    "rows-0": ({"Rows": 0}, "Rows is 0"),
    "columns-0": ({"Columns": 0}, "Columns is 0"),
    "rows-65535": ({"Rows": 65535}, "Rows 65,535 exceeds"),
    "rows-columns-65535": ({"Rows": 65535, "Columns": 65535}, "Rows 65,535 exceeds"),
    "bits-allocated-64": (
        {"BitsAllocated": 64, "BitsStored": 64, "HighBit": 63},
        "BitsAllocated 64",
    ),
    "samples-per-pixel-7": ({"SamplesPerPixel": 7}, "SamplesPerPixel 7"),
    "frames-100000": ({"NumberOfFrames": 100000}, "NumberOfFrames 100,000 exceeds"),
    "frames-0": ({"NumberOfFrames": 0}, "NumberOfFrames is 0"),
    "pixels-12000x12000": ({"Rows": 12000, "Columns": 12000}, "decode limit max_pixels"),
}


def dx_dataset(pixels: np.ndarray | None = None) -> Dataset:
    """A DX For Presentation chest PA (8-bit unless ``pixels`` is uint16)."""
    pixels = chest_like(64) if pixels is None else pixels
    ds = make_dataset(
        pixels.astype(np.uint8) if pixels.dtype != np.uint16 else np.zeros((1, 1), np.uint8),
        sop_class=DX_FOR_PRESENTATION,
        modality="DX",
    )
    if pixels.dtype == np.uint16:
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = pixels.tobytes()
    ds.PresentationIntentType = "FOR PRESENTATION"
    return ds


# ---------------------------------------------------------------------------------------
# Deflate


def _explicit_le(write_into: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, write_into)
    return buf.getvalue()


def _element_header(group: int, element: int, vr: bytes, length: int) -> bytes:
    """Explicit VR LE header of an OB/OW element (4-byte length)."""
    return struct.pack("<HH2sHL", group, element, vr, 0, length)


def _zero_block(size: int) -> bytes:
    """Raw deflate blocks for ``size`` zeros, byte-aligned and history-free (full flush),
    so copies can be concatenated into one valid stream."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(bytes(size)) + comp.flush(zlib.Z_FULL_FLUSH)


def _write_deflated(fp: BinaryIO, parts: Iterable[bytes | int]) -> None:
    """Deflate ``parts`` (bytes as they are; an int is that many zeros) into ``fp``,
    streaming: zeros go out as repeated 1 MiB full-flush blocks."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = b""
    for part in parts:
        if isinstance(part, bytes):
            fp.write(comp.compress(part))
            continue
        fp.write(comp.flush(zlib.Z_FULL_FLUSH))  # no back-reference across the zeros
        whole, rest = divmod(part, MIB)
        if whole:
            block = block or _zero_block(MIB)
            for _ in range(whole):
                fp.write(block)
        if rest:
            fp.write(_zero_block(rest))
    fp.write(comp.flush())


def _write_part10_deflated(path: Path, ds: Dataset, parts: Iterable[bytes | int]) -> Path:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        _write_deflated(fp, parts)
    return path


def deflate_bomb(
    path: Path,
    *,
    inflated_bytes: int = GIB,
    rows: int | None = None,
    columns: int | None = None,
    where: Literal["pixel_data", "private", "trailing"] = "pixel_data",
) -> Path:
    """A Deflated DX carrying ``inflated_bytes`` of zeros (about 1/1000 of it on disk).

    ``where="pixel_data"``: the zeros are the Pixel Data, with honest 8-bit dimensions
    (32768 x 32768 for 1 GiB) or, given ``rows`` and ``columns``, a (small) size that
    lies. ``"private"``: the zeros sit in a private OB element before Pixel Data;
    ``"trailing"``: in Data Set Trailing Padding (FFFC,FFFC) after it. In those two the
    Pixel Data itself is an honest 64 x 64 frame.
    """
    ds = dx_dataset()
    del ds.PixelData
    parts: list[bytes | int] = []
    pixels = [_element_header(0x7FE0, 0x0010, b"OB", 64 * 64), 64 * 64]
    if where == "private":
        ds.add_new(0x7FDF0010, "LO", "CXR POISON")
        parts += [_explicit_le(ds), _element_header(0x7FDF, 0x1010, b"OB", inflated_bytes)]
        parts += [inflated_bytes, *pixels]
        return _write_part10_deflated(path, ds, parts)
    if where == "trailing":
        parts += [_explicit_le(ds), *pixels]
        parts += [_element_header(0xFFFC, 0xFFFC, b"OB", inflated_bytes), inflated_bytes]
        return _write_part10_deflated(path, ds, parts)
    side = math.isqrt(inflated_bytes)
    ds.Rows = rows if rows is not None else side
    ds.Columns = columns if columns is not None else inflated_bytes // side
    parts += [_explicit_le(ds), _element_header(0x7FE0, 0x0010, b"OB", inflated_bytes)]
    parts.append(inflated_bytes)
    return _write_part10_deflated(path, ds, parts)


def deflated_dx(path: Path, *, rows: int = 64, columns: int = 64) -> Path:
    """A small, honest Deflated DX of zeros, written the bomb's way (to prove it valid)."""
    return deflate_bomb(path, inflated_bytes=rows * columns, rows=rows, columns=columns)


# ---------------------------------------------------------------------------------------
# RLE


def rle_zero_frame(rows: int, columns: int) -> bytes:
    """One RLE Lossless frame (PS3.5 Annex G) of 8-bit zeros, each row its own runs."""
    full, rest = divmod(columns, 128)
    row = b"\x81\x00" * full  # -127: repeat the next byte 128 times
    if rest:
        row += bytes([257 - rest, 0])  # 1 - n: repeat the next byte n times
    segment = row * rows
    segment += b"\x00" * (len(segment) % 2)
    header = struct.pack("<16L", 1, 64, *([0] * 14))
    return header + segment


def rle_bomb(path: Path, *, rows: int = 20000, columns: int = 20000) -> Path:
    """An RLE Lossless DX declaring ``rows`` x ``columns`` 8-bit zeros (20000 x 20000:
    about 6 MB on disk, 400 MB decoded)."""
    ds = dx_dataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([rle_zero_frame(rows, columns)])
    ds["PixelData"].VR = "OB"
    return write(ds, path)


# ---------------------------------------------------------------------------------------
# Native pixel data


def _frame16(rows: int = 256, columns: int = 256) -> np.ndarray:
    return (chest_like(max(rows, columns))[:rows, :columns].astype(np.uint16) * 16).astype(
        np.uint16
    )


def truncated_pixel_data(path: Path, *, keep: float = 0.5, cut_file: bool = False) -> Path:
    """A 16-bit 256 x 256 DX whose Pixel Data holds only ``keep`` of its 131072 bytes.

    ``cut_file=False``: the element's length says so (a sender that wrote short);
    ``cut_file=True``: the element declares the full length but the file ends early
    (an interrupted transfer).
    """
    ds = dx_dataset(_frame16())
    full = len(ds.PixelData)
    kept = int(full * keep) // 2 * 2
    if not cut_file:
        ds.PixelData = ds.PixelData[:kept]
        return write(ds, path)
    write(ds, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - full + kept])
    return path


def zero_length_pixel_data(path: Path) -> Path:
    """A DX whose Pixel Data element is present but empty."""
    ds = dx_dataset()
    ds.PixelData = b""
    return write(ds, path)


def absurd_dimensions(path: Path, **attributes: int) -> Path:
    """A 64 x 64 DX with header attributes overridden, e.g. ``Rows=0``,
    ``BitsAllocated=64``, ``SamplesPerPixel=7``, ``NumberOfFrames=100000``
    (the Pixel Data stays 4096 bytes)."""
    ds = dx_dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return write(ds, path)


def blank_frame(path: Path, *, rows: int = 256, columns: int = 256) -> Path:
    """An 8-bit DX of zeros: a blank exposure."""
    return write(dx_dataset(np.zeros((rows, columns), np.uint8)), path)


def constant_frame(path: Path, *, value: int = 1234, rows: int = 256, columns: int = 256) -> Path:
    """A 16-bit DX in which every pixel is ``value``."""
    return write(dx_dataset(np.full((rows, columns), value, np.uint16)), path)


# ---------------------------------------------------------------------------------------
# Hostile structure (issue 20)


def _part10_explicit(path: Path, ds: Dataset, before_pixels: Iterable[bytes]) -> Path:
    """Write ``ds`` (Explicit VR LE) with raw ``before_pixels`` spliced in right after its
    last element before Pixel Data; streamed, so the file may be large."""
    pixel_data = ds.PixelData
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM" + meta.getvalue() + _explicit_le(ds))
        for part in before_pixels:
            fp.write(part)
        fp.write(_element_header(0x7FE0, 0x0010, b"OB", len(pixel_data)) + pixel_data)
    return path


def _private_sequence(undefined: bool, length: int = 0) -> bytes:
    """Private creator (0009,0010) "CXRTEST " and the header of (0009,1000) SQ."""
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"CXRTEST "
    size = 0xFFFFFFFF if undefined else length
    return creator + struct.pack("<HH2sHL", 0x0009, 0x1000, b"SQ", 0, size)


def many_items(path: Path, *, count: int = 2_000_000, undefined: bool = True) -> Path:
    """A 64 x 64 DX whose private sequence holds ``count`` empty items: undefined length
    (item + item delimiter, 16 bytes each: 2 million = 32 MB, what was sent live) or
    explicit length (8 bytes each: DCMTK's re-encoding, 16 MB, under max_header_bytes)."""
    ds = dx_dataset()
    if undefined:
        item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack(
            "<HHL", 0xFFFE, 0xE00D, 0
        )
        end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        head = _private_sequence(True)
    else:
        item = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
        end = b""
        head = _private_sequence(False, len(item) * count)
    chunk = 65536
    parts = [head]
    whole, rest = divmod(count, chunk)
    parts += [item * chunk] * whole + [item * rest, end]
    return _part10_explicit(path, ds, parts)


def nested_sequences(path: Path, *, depth: int = 10_000) -> Path:
    """A 64 x 64 DX with a private sequence nested ``depth`` deep (undefined lengths:
    each level an item holding the next sequence)."""
    ds = dx_dataset()
    level = struct.pack("<HH2sHL", 0x0009, 0x1000, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"CXRTEST "
    # Each nested item needs its own private creator before the private sequence.
    return _part10_explicit(path, ds, [(level + creator) * depth, close * depth])


def many_elements(path: Path, *, count: int = 1_900_000) -> Path:
    """A 64 x 64 DX with ``count`` empty private elements (8 bytes each, top level:
    15 MB, under max_header_bytes)."""
    ds = dx_dataset()
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"CXRTEST "
    groups = []
    for group in range(0x0011, 0x0011 + 2 * (count // 0xFF00 + 1), 2):
        elements = b"".join(
            struct.pack("<HH2sH", group, e, b"LO", 0) for e in range(0x0100, 0x10000)
        )
        groups.append(struct.pack("<HH2sH", group, 0x0010, b"LO", 8) + b"CXRTEST " + elements)
    data = creator + b"".join(groups)
    return _part10_explicit(path, ds, [data[: len(creator) + 8 * count]])


def oversized_native_pixel_data(path: Path, *, size: int = 64 * MIB) -> Path:
    """A 64 x 64 8-bit DX (4096 bytes of image) whose Pixel Data holds ``size`` bytes."""
    ds = dx_dataset()
    ds.PixelData = ds.PixelData + bytes(size - len(ds.PixelData))
    return write(ds, path)


def _j2k_codestream(rows: int, columns: int) -> bytes:
    from openjpeg import encode

    return bytes(encode(chest_like(max(rows, columns))[:rows, :columns]))


def j2k_size_lie(path: Path, *, declared: int = 20000) -> Path:
    """A 64 x 64 JPEG 2000 Lossless DX whose (otherwise valid) codestream's SIZ says
    ``declared`` x ``declared`` (image and tile size rewritten)."""
    stream = bytearray(_j2k_codestream(64, 64))
    at = stream.index(b"\xff\x4f\xff\x51") + 4
    # Lsiz Rsiz | Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz
    struct.pack_into(">IIIIII", stream, at + 4, declared, declared, 0, 0, declared, declared)
    ds = dx_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    return write(ds, path)


def jpeg_size_lie(path: Path, *, declared: int = 20000) -> Path:
    """A 64 x 64 JPEG Baseline DX whose codestream's SOF says ``declared`` x ``declared``."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(chest_like(64)).save(out, format="JPEG", quality=90)
    stream = bytearray(out.getvalue())
    at = stream.index(b"\xff\xc0") + 5  # marker, length, precision
    struct.pack_into(">HH", stream, at, declared, declared)
    ds = dx_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    return write(ds, path)


#: The hostile corpus of issue 20: name -> (builder, C-STORE status expected, a fragment
#: of the Error Comment). Sizes as sent live.
HOSTILE: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "items-2m-undefined-32mb": (lambda p: many_items(p), 0xC223, "header structure"),
    "items-2m-explicit-16mb": (
        lambda p: many_items(p, undefined=False),
        0xC223,
        "header structure",
    ),
    "items-200k-undefined-3mb": (
        lambda p: many_items(p, count=200_000),
        0xC223,
        "header structure",
    ),
    "nested-10000-deep": (lambda p: nested_sequences(p), 0xC223, "header structure"),
    "elements-1.9m-15mb": (lambda p: many_elements(p), 0xC223, "header structure"),
    "native-pixel-data-64mb-for-64x64": (
        lambda p: oversized_native_pixel_data(p),
        0xC220,
        "too long",
    ),
    "j2k-siz-20000x20000-in-64x64": (lambda p: j2k_size_lie(p), 0xC221, "codestream"),
    "jpeg-sof-20000x20000-in-64x64": (lambda p: jpeg_size_lie(p), 0xC221, "codestream"),
}
