"""Hostile structure (issue 20): the header pre-scan (sequence items, elements, nesting,
bytes, before pydicom builds objects), Pixel Data longer than the image, and compressed
frames whose codestream declares another size than the header, in the shared checks
(listener, worker, web) and in the shared decode path."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from cxr_common.limits import DecodeLimits
from cxr_imaging import decode_dataset
from cxr_imaging.codestream import read_codestream_size
from cxr_imaging.limits import (
    CodestreamSizeError,
    HeaderStructureError,
    InputRefusedError,
    PixelDataLengthError,
    check_instance,
    read_checked_dataset,
)
from tests import poison
from tests.dicom_factory import write

LIMITS = DecodeLimits()


@pytest.mark.parametrize("name", sorted(poison.HOSTILE))
def test_every_hostile_file_is_refused_with_its_code(name: str, tmp_path: Path) -> None:
    build, status, fragment = poison.HOSTILE[name]
    path = build(tmp_path / f"{name}.dcm")
    with pytest.raises(InputRefusedError) as exc:
        check_instance(path, LIMITS)
    assert exc.value.store_status == status
    assert fragment in exc.value.error_comment
    assert len(exc.value.error_comment) <= 64
    # the worker's and the web app's read refuse it the same way
    with pytest.raises(InputRefusedError) as again:
        read_checked_dataset(path.read_bytes(), LIMITS)
    assert again.value.store_status == status


def _nested(depth: int, items_per_level: int = 2) -> Dataset:
    ds = poison.dx_dataset()
    inner = Dataset()
    inner.CodeValue = "LEAF"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner] * items_per_level)
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_ordinary_nesting_passes(implicit: bool, tmp_path: Path) -> None:
    """Six levels (an SR's depth), 126 items: well within every limit, either VR form."""
    ds = _nested(6)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write(ds, tmp_path / "nested.dcm")
    header = check_instance(path, LIMITS)
    assert len(header.dataset.ContentSequence) == 2


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize(
    ("limit", "value", "what"),
    [
        ("max_sequence_depth", 5, "nested more than 5 deep"),
        ("max_header_items", 100, "more than 100 sequence items"),
        ("max_header_elements", 100, "more than 100 data elements"),
    ],
)
def test_each_structure_limit_is_a_setting(
    implicit: bool, limit: str, value: int, what: str, tmp_path: Path
) -> None:
    ds = _nested(6)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write(ds, tmp_path / "nested.dcm")
    with pytest.raises(HeaderStructureError, match=what) as exc:
        check_instance(path, DecodeLimits(**{limit: value}))
    assert exc.value.store_status == 0xC223


def test_a_sequence_inside_un_is_counted_as_pydicom_would_read_it(tmp_path: Path) -> None:
    """A known sequence sent as UN with a defined length (as a router that does not know
    it forwards it) is read by pydicom as implicit VR LE items: the scan counts them."""
    leaf = struct.pack("<HHL", 0x0008, 0x0100, 4) + b"LEAF"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(leaf)) + leaf
    value = item * 300
    element = struct.pack("<HH2sHL", 0x0040, 0xA730, b"UN", 0, len(value)) + value
    path = poison._part10_explicit(tmp_path / "un.dcm", poison.dx_dataset(), [element])
    assert len(pydicom.dcmread(path).ContentSequence) == 300  # pydicom reads the items
    check_instance(path, LIMITS)
    with pytest.raises(HeaderStructureError, match="more than 100 sequence items"):
        check_instance(path, DecodeLimits(max_header_items=100))


def test_native_pixel_data_a_little_long_passes_far_too_long_is_refused(tmp_path: Path) -> None:
    """The pad byte, or padding to a block (pydicom's MR_small_padded.dcm: 128 bytes),
    passes; more than 64 kB past the image is refused."""
    ds = poison.dx_dataset()
    ds.Rows, ds.Columns = 63, 63  # 3969 bytes: odd, padded to 3970 by the writer
    ds.PixelData = bytes(3969 + 127)
    check_instance(write(ds, tmp_path / "padded.dcm"), LIMITS)
    ds.PixelData = bytes(3969 + 64 * 1024 + 1)
    with pytest.raises(PixelDataLengthError, match="more than the 3,969") as exc:
        check_instance(write(ds, tmp_path / "long.dcm"), LIMITS)
    assert exc.value.store_status == 0xC220


def test_the_codestream_readers() -> None:
    j2k_siz = b"\xff\x4f\xff\x51" + struct.pack(
        ">HHIIIIIIIIHBBB", 41, 0, 100, 80, 10, 20, 100, 80, 0, 0, 1, 7, 1, 1
    )
    size = read_codestream_size("1.2.840.10008.1.2.4.90", j2k_siz)
    assert size is not None
    assert (size.columns, size.rows, size.components) == (90, 60, 1)
    sof = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc3\x00\x0b\x10\x00\x50\x00\x64\x01\x01\x11\x00"
    size = read_codestream_size("1.2.840.10008.1.2.4.70", sof)
    assert size is not None
    assert (size.kind, size.rows, size.columns) == ("JPEG", 80, 100)
    assert read_codestream_size("1.2.840.10008.1.2.4.50", b"not a jpeg") is None
    assert read_codestream_size("1.2.840.10008.1.2.5", b"\x00" * 64) is None  # RLE


def test_a_frame_without_a_codestream_header_is_refused(tmp_path: Path) -> None:
    ds = poison.dx_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(CodestreamSizeError, match="no readable codestream header"):
        check_instance(write(ds, tmp_path / "nosiz.dcm"), LIMITS)


@pytest.mark.parametrize(
    "build", [poison.j2k_size_lie, poison.jpeg_size_lie], ids=["jpeg2000", "jpeg"]
)
def test_the_decode_path_refuses_a_codestream_larger_than_its_header(
    build: Callable[[Path], Path], tmp_path: Path
) -> None:
    """decode_dataset (worker, web app, results sender) checks too, without limits: a
    data set read by any other path never reaches the decoder."""
    ds = pydicom.dcmread(build(tmp_path / "lie.dcm"))
    with pytest.raises(CodestreamSizeError, match="codestream dimensions") as exc:
        decode_dataset(ds)
    assert "20,000 x 20,000" in exc.value.reason


def test_an_honest_jpeg2000_frame_decodes(tmp_path: Path) -> None:
    ds = pydicom.dcmread(poison.j2k_size_lie(tmp_path / "honest.dcm", declared=64))
    image = decode_dataset(ds)
    assert image.pixels.shape == (64, 64)
