"""Hypothesis strategies for the listener fuzz: mutated DICOM data sets (element-level and
byte-level, every transfer syntax the listener takes plainly) and mutated raw byte
streams of whole associations (PDU-level), built from valid seeds."""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from tests.dicom_factory import TEST_ROOT, chest_like, make_dataset

DX = "1.2.840.10008.5.1.4.1.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
CR = "1.2.840.10008.5.1.4.1.1.1"
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
)
INTERESTING_U32 = (0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
HOSTILE_TEXT = (
    "",
    " ",
    "\\",
    "../../../etc/passwd",
    "1.2.3\x00..",
    "1." * 40,
    "A" * 70,
    "\u00e9\u00e8\u4e2d\u6587",
    "%s%n%x",
    "DOE^JANE",
    "\x1b[31m",
)


@dataclass(frozen=True)
class FuzzFile:
    """Bytes of a Part 10 file: File Meta intact (the sender reads it), data set fuzzed."""

    sop_class: str
    sop_instance_uid: str
    transfer_syntax: str
    data: bytes


def _part10(ds: Dataset, body: bytes) -> bytes:
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + body


def _encoded_body(ds: Dataset, syntax: str) -> bytes:
    """The data set encoded in ``syntax`` (pydicom does deflate and RLE for us)."""
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=None, implicit_vr=None)
    raw = buffer.getvalue()
    meta_end = 144 + struct.unpack("<L", raw[140:144])[0]
    return raw[meta_end:]


_ELEMENT_EDITS = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                "Rows",
                "Columns",
                "BitsAllocated",
                "BitsStored",
                "HighBit",
                "SamplesPerPixel",
                "PixelRepresentation",
                "NumberOfFrames",
            ]
        ),
        st.sampled_from([0, 1, 3, 7, 8, 12, 16, 31, 32, 64, 255, 4096, 12001, 65535]),
    ),
    st.tuples(
        st.sampled_from(
            [
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
                "SOPClassUID",
                "Modality",
                "BodyPartExamined",
                "ViewPosition",
                "PhotometricInterpretation",
                "AccessionNumber",
                "SeriesDescription",
                "PatientName",
                "TransferSyntaxUID",
            ]
        ),
        st.sampled_from(HOSTILE_TEXT),
    ),
    st.tuples(
        st.just("delete"),
        st.sampled_from(
            [
                "StudyInstanceUID",
                "SOPInstanceUID",
                "SOPClassUID",
                "Rows",
                "Columns",
                "BitsAllocated",
                "PixelData",
                "Modality",
                "PhotometricInterpretation",
            ]
        ),
    ),
    st.tuples(st.just("pixels"), st.integers(min_value=0, max_value=9000)),
    st.tuples(st.just("nest"), st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("private"), st.integers(min_value=0, max_value=70000)),
)


def _apply_edit(ds: Dataset, edit: tuple[str, object]) -> None:
    key, value = edit
    if key == "delete":
        if str(value) in ds:
            delattr(ds, str(value))
    elif key == "pixels":
        ds.PixelData = bytes(int(value)) if isinstance(value, int) else b""
    elif key == "nest":
        inner = Dataset()
        inner.CodeValue = "X"
        for _ in range(int(str(value))):
            outer = Dataset()
            outer.ViewCodeSequence = Sequence([inner])
            inner = outer
        ds.ViewCodeSequence = inner.ViewCodeSequence
    elif key == "private":
        ds.add_new(0x00190010, "LO", "FUZZ")
        ds.add_new(0x00191001, "OB", bytes(int(str(value))))
    elif key == "TransferSyntaxUID":
        ds.file_meta.TransferSyntaxUID = str(value) or ExplicitVRLittleEndian
    else:
        try:
            setattr(ds, key, value)
        except (ValueError, TypeError, OverflowError):
            pass


_BYTE_EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("u32"), st.floats(0, 1), st.sampled_from(INTERESTING_U32)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 512)),
        st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    ),
    max_size=4,
)


def _mutate_bytes(data: bytes, edits: list[tuple[str, float, object]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out and kind != "insert":
            continue
        pos = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "flip":
            out[pos] ^= int(str(value)) or 1
        elif kind == "u32":
            out[pos : pos + 4] = struct.pack("<L", int(str(value)))
        elif kind == "insert":
            out[pos:pos] = bytes(value) if isinstance(value, bytes) else b""
        elif kind == "delete":
            del out[pos : pos + int(str(value))]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


@st.composite
def fuzz_files(draw: st.DrawFn) -> FuzzFile:
    """A valid small instance, element edits, encoded in one syntax, then byte edits of
    the data set (File Meta left as the request needs it)."""
    sop_class = draw(st.sampled_from([DX, CR, SC]))
    size = draw(st.sampled_from([8, 64, 130]))
    ds = make_dataset(
        chest_like(size, seed=draw(st.integers(0, 3))),
        sop_class=sop_class,
        modality="DX" if sop_class == DX else "CR",
        sop_uid=f"{TEST_ROOT}77.{draw(st.integers(0, 10**12))}",
        study_uid=f"{TEST_ROOT}78.{draw(st.integers(0, 50))}",
    )
    syntax = draw(st.sampled_from(SYNTAXES))
    edits = draw(st.lists(_ELEMENT_EDITS, max_size=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values are the point
        for edit in edits:
            _apply_edit(ds, edit)
        try:
            body = _encoded_body(ds, syntax)
        except Exception:  # noqa: BLE001 - an edit pydicom will not encode: send a plain one
            plain = make_dataset(np.zeros((8, 8), np.uint8), sop_class=sop_class)
            body = _encoded_body(plain, syntax)
    body = _mutate_bytes(body, draw(_BYTE_EDITS))
    meta_ds = Dataset()
    meta_ds.file_meta = make_dataset(np.zeros((1, 1), np.uint8), sop_class=sop_class).file_meta
    meta_ds.file_meta.MediaStorageSOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    meta_ds.file_meta.TransferSyntaxUID = syntax
    return FuzzFile(
        sop_class,
        str(ds.file_meta.MediaStorageSOPInstanceUID),
        str(syntax),
        _part10(meta_ds, body),
    )


# ---------------------------------------------------------------------------------------
# Raw association byte streams


def split_pdus(stream: bytes) -> list[bytes]:
    """Cut a recorded client -> server stream into PDUs (type, reserved, 4-byte length)."""
    pdus, pos = [], 0
    while pos + 6 <= len(stream):
        length = struct.unpack(">L", stream[pos + 2 : pos + 6])[0]
        pdus.append(stream[pos : pos + 6 + length])
        pos += 6 + length
    return pdus


@st.composite
def raw_streams(draw: st.DrawFn, seeds: list[list[bytes]]) -> list[bytes]:
    """A recorded association (A-ASSOCIATE-RQ, P-DATA..., A-RELEASE-RQ) with its PDUs
    mutated, dropped, repeated or cut; or plain random bytes (one "PDU")."""
    if draw(st.integers(0, 9)) == 0:
        return [draw(st.binary(min_size=0, max_size=2048))]
    pdus = list(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 3))):
        if not pdus:
            break
        i = draw(st.integers(0, len(pdus) - 1))
        action = draw(st.sampled_from(["mutate", "mutate", "length", "drop", "repeat", "cut"]))
        if action == "mutate":
            pdus[i] = _mutate_bytes(pdus[i], draw(_BYTE_EDITS))
        elif action == "length":
            value = draw(st.sampled_from(INTERESTING_U32))
            pdus[i] = pdus[i][:2] + struct.pack(">L", value) + pdus[i][6:]
        elif action == "drop":
            del pdus[i]
        elif action == "repeat":
            pdus.insert(i, pdus[i])
        else:
            pdus = pdus[: i + 1]
            pdus[i] = pdus[i][: draw(st.integers(0, len(pdus[i])))]
    return pdus
