"""cxr_imaging.limits: every poison file of issue 12 refused with the right typed error and
reason before any decode, with bounded memory; every committed sample passes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from cxr_common.settings import ListenerSettings, WebSettings, WorkerSettings
from cxr_imaging import ImagingError, UndecodableError, decode_dataset
from cxr_imaging.limits import (
    STATUS_DECLARED_SIZE,
    STATUS_HEADER_SIZE,
    STATUS_INFLATED_SIZE,
    STATUS_PIXEL_DATA_LENGTH,
    BlankImageError,
    DeclaredSizeError,
    DecodeLimits,
    HeaderSizeError,
    InflatedSizeError,
    InputRefusedError,
    PixelDataLengthError,
    check_declared_size,
    check_instance,
    check_not_blank,
    check_uncompressed_length,
    dynamic_range,
    expected_pixel_data_length,
    is_blank_or_constant,
    read_checked_dataset,
    read_header,
)
from tests import poison
from tests.dicom_factory import chest_like
from worklist.config import WebConfig

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "cxr_triage" / "samples").rglob("*.dcm"))
#: The one sample no installed plugin decodes (README): its header must still pass.
UNDECODABLE = {"nm-jpeg-extended.dcm"}
LIMITS = DecodeLimits()
#: Peak RSS a child process may reach while refusing a bomb (it would be > 1 GiB if
#: anything inflated or decoded the bomb whole).
MAX_CHILD_RSS_MB = 300


def _refused(exc: pytest.ExceptionInfo[InputRefusedError], status: int, *fragments: str) -> None:
    assert exc.value.store_status == status
    for fragment in fragments:
        assert fragment in exc.value.reason
    comment = exc.value.error_comment
    assert 0 < len(comment) <= 64
    assert comment.isascii()
    assert "\\" not in comment


# ---------------------------------------------------------------------------------------
# Real samples pass


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_committed_sample_passes_the_checks(path: Path) -> None:
    header = check_instance(path, LIMITS)
    full = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID", "Modality", "Rows"):
        assert header.dataset.get(keyword) == full.get(keyword)
    assert header.transfer_syntax_uid == str(full.file_meta.TransferSyntaxUID)
    assert header.pixel_data is not None
    assert header.pixel_data.keyword == "PixelData"
    assert header.pixel_data.present_length > 0
    assert check_declared_size(header.dataset, LIMITS) == get_expected_length(full, "bytes")
    assert header.inflated_length is None  # none of them is Deflated

    ds = read_checked_dataset(path.read_bytes(), LIMITS)
    assert ds.SOPInstanceUID == full.SOPInstanceUID
    if path.name in UNDECODABLE:
        with pytest.raises(UndecodableError):
            decode_dataset(ds)
        return
    image = decode_dataset(ds)
    check_not_blank(image.pixels, LIMITS)
    assert not is_blank_or_constant(image.pixels)


def test_samples_cover_native_and_encapsulated_syntaxes() -> None:
    syntaxes = {check_instance(p, LIMITS).transfer_syntax_uid for p in SAMPLES}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.91"} <= syntaxes


# ---------------------------------------------------------------------------------------
# The factory makes valid DICOM


def test_deflated_factory_writes_a_file_pydicom_reads_and_the_checks_pass(tmp_path: Path) -> None:
    path = poison.deflated_dx(tmp_path / "deflated.dcm", rows=300, columns=200)
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert ds.pixel_array.shape == (300, 200)
    assert not ds.pixel_array.any()

    header = check_instance(path, LIMITS)
    assert header.pixel_data is not None
    assert header.pixel_data.declared_length == header.pixel_data.present_length == 60000
    assert header.inflated_length is not None
    assert header.inflated_length > 60000
    assert read_checked_dataset(path, LIMITS).pixel_array.shape == (300, 200)


def test_rle_factory_encodes_valid_rle(tmp_path: Path) -> None:
    ds = pydicom.dcmread(poison.rle_bomb(tmp_path / "rle.dcm", rows=130, columns=333))
    assert ds.pixel_array.shape == (130, 333)
    assert not ds.pixel_array.any()


def test_bombs_are_small_on_disk(tmp_path: Path) -> None:
    assert poison.deflate_bomb(tmp_path / "d.dcm").stat().st_size < 2 * poison.MIB
    assert poison.rle_bomb(tmp_path / "r.dcm").stat().st_size < 8 * poison.MIB


# ---------------------------------------------------------------------------------------
# Deflate bombs: bounded memory


_CHILD = """
import json, resource, sys
from pathlib import Path
from cxr_imaging.limits import DecodeLimits, InputRefusedError, check_instance, read_header
from cxr_imaging.limits import read_checked_dataset
results = {}
for name, fn in [("honest", read_header), ("honest", check_instance), ("lying", check_instance),
                 ("lying", read_checked_dataset), ("private", check_instance),
                 ("trailing", check_instance), ("rle", check_instance)]:
    try:
        fn(Path(sys.argv[1]) / f"{name}.dcm", DecodeLimits())
        outcome = "accepted"
    except InputRefusedError as exc:
        outcome = f"{type(exc).__name__}: {exc.reason}"
    results[f"{name}/{fn.__name__}"] = outcome
# VmHWM: this process image's own peak RSS. ru_maxrss would also count the parent's
# pages at fork time (Linux keeps the larger across execve).
status = Path("/proc/self/status")
hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
results["peak_kb"] = int(hwm[0].split()[1]) if hwm else resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(results))
"""


def test_deflate_and_rle_bombs_are_refused_with_bounded_memory(tmp_path: Path) -> None:
    poison.deflate_bomb(tmp_path / "honest.dcm")  # 32768 x 32768, 1 GiB of zeros
    poison.deflate_bomb(tmp_path / "lying.dcm", rows=512, columns=512)
    poison.deflate_bomb(tmp_path / "private.dcm", where="private")
    poison.deflate_bomb(tmp_path / "trailing.dcm", where="trailing")
    poison.rle_bomb(tmp_path / "rle.dcm")  # 20000 x 20000
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    results = json.loads(child.stdout)
    peak_mb = results.pop("peak_kb") / 1024
    print(f"peak RSS refusing 4 deflate bombs of 1 GiB and a 20000x20000 RLE: {peak_mb:.0f} MB")
    assert peak_mb < MAX_CHILD_RSS_MB
    assert results["honest/read_header"].startswith("InflatedSizeError: ")
    assert results["honest/check_instance"].startswith("DeclaredSizeError: Rows 32,768 exceeds")
    assert results["lying/check_instance"].startswith("InflatedSizeError: ")
    assert "max_inflated_bytes" in results["lying/check_instance"]
    assert results["lying/read_checked_dataset"].startswith("InflatedSizeError: ")
    assert results["private/check_instance"].startswith("HeaderSizeError: ")
    assert "max_header_bytes" in results["private/check_instance"]
    assert results["trailing/check_instance"].startswith("InflatedSizeError: ")
    assert "max_inflated_bytes" in results["trailing/check_instance"]
    assert results["rle/check_instance"].startswith("DeclaredSizeError: Rows 20,000 exceeds")


def test_inflated_length_is_counted_against_the_limit(tmp_path: Path) -> None:
    path = poison.deflate_bomb(tmp_path / "t.dcm", inflated_bytes=8 * poison.MIB, where="trailing")
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(InflatedSizeError) as exc:
        check_instance(path, DecodeLimits(max_inflated_bytes=4 * poison.MIB))
    _refused(exc, STATUS_INFLATED_SIZE, "inflates to more than 4 MiB", "check the sending")
    header = check_instance(path, DecodeLimits(max_inflated_bytes=9 * poison.MIB))
    assert header.inflated_length is not None
    assert 8 * poison.MIB < header.inflated_length < 9 * poison.MIB


def test_a_deflated_header_is_bounded(tmp_path: Path) -> None:
    path = poison.deflate_bomb(tmp_path / "p.dcm", inflated_bytes=4 * poison.MIB, where="private")
    with pytest.raises(HeaderSizeError) as exc:
        read_header(path, DecodeLimits(max_header_bytes=poison.MIB))
    _refused(exc, STATUS_HEADER_SIZE, "more than 1 MiB before Pixel Data", "max_header_bytes")
    assert check_instance(path, LIMITS).pixel_data is not None  # 4 MiB header is allowed


def test_a_native_header_is_bounded_before_its_big_element_is_read(tmp_path: Path) -> None:
    ds = poison.dx_dataset()
    ds.add_new(0x7FDF0010, "LO", "CXR POISON")
    ds.add_new(0x7FDF1010, "OB", bytes(2 * poison.MIB))
    path = poison.write(ds, tmp_path / "big-private.dcm")
    with pytest.raises(HeaderSizeError) as exc:
        check_instance(path, DecodeLimits(max_header_bytes=poison.MIB))
    _refused(exc, STATUS_HEADER_SIZE, "before Pixel Data")
    assert check_instance(path, LIMITS).pixel_data is not None


# ---------------------------------------------------------------------------------------
# Pixel bombs and absurd dimensions


def test_rle_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = poison.rle_bomb(tmp_path / "rle.dcm")
    with pytest.raises(DeclaredSizeError) as exc:
        check_instance(path, LIMITS)
    _refused(exc, STATUS_DECLARED_SIZE, "Rows 20,000 exceeds the limit of 12,000", "max_rows")
    wide = DecodeLimits(max_rows=20000, max_columns=20000)
    with pytest.raises(DeclaredSizeError) as exc:
        check_instance(path, wide)
    _refused(exc, STATUS_DECLARED_SIZE, "400,000,000 exceeds", "max_pixels")
    roomy = DecodeLimits(max_pixels=400_000_000, max_rows=20000, max_columns=20000)
    with pytest.raises(DeclaredSizeError) as exc:
        check_instance(path, roomy.model_copy(update={"max_decoded_bytes": 100 * poison.MIB}))
    _refused(exc, STATUS_DECLARED_SIZE, "decoded size (bytes) 400,000,000", "max_decoded_bytes")
    assert check_instance(path, roomy).pixel_data is not None  # allowed when set so


@pytest.mark.parametrize("case", sorted(poison.ABSURD))
def test_absurd_dimensions_are_refused(tmp_path: Path, case: str) -> None:
    attributes, fragment = poison.ABSURD[case]
    path = poison.absurd_dimensions(tmp_path / f"{case}.dcm", **attributes)
    with pytest.raises(DeclaredSizeError) as exc:
        check_instance(path, LIMITS)
    _refused(exc, STATUS_DECLARED_SIZE, fragment, "check the modality's export")


def test_missing_or_unreadable_dimensions_are_refused() -> None:
    ds = poison.dx_dataset()
    del ds.Rows
    with pytest.raises(DeclaredSizeError, match="Rows is missing"):
        check_declared_size(ds, LIMITS)
    ds = poison.dx_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: not an IS, on purpose
        ds.NumberOfFrames = "2.5"
    with pytest.raises(DeclaredSizeError, match="NumberOfFrames is not a whole number"):
        check_declared_size(ds, LIMITS)
    ds = poison.dx_dataset()
    ds.BitsStored = 12
    with pytest.raises(DeclaredSizeError, match="BitsStored 12 does not fit BitsAllocated 8"):
        check_declared_size(ds, LIMITS)


def test_limits_are_settings_with_defaults() -> None:
    assert LIMITS.max_pixels == 64_000_000
    assert LIMITS.max_frames == 1
    assert LIMITS.max_decoded_bytes == 512 * poison.MIB
    assert LIMITS.max_inflated_bytes == 528 * poison.MIB
    assert LIMITS.max_header_bytes == 16 * poison.MIB
    with pytest.raises(ValidationError, match="frozen"):
        LIMITS.max_frames = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_frames"):
        DecodeLimits(max_frames=0)
    with pytest.raises(ValueError, match="max_pixel"):
        DecodeLimits(max_pixel=1)  # type: ignore[call-arg]
    ds = poison.dx_dataset()
    ds.NumberOfFrames = 4
    ds.PixelData = ds.PixelData * 4
    with pytest.raises(DeclaredSizeError, match="NumberOfFrames 4 exceeds the limit of 1"):
        check_declared_size(ds, LIMITS)
    assert check_declared_size(ds, DecodeLimits(max_frames=4)) == 4 * 64 * 64


def test_every_process_converts_its_settings_to_the_same_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One declaration: listener, worker and web read the same CXR_* variables and convert
    them the one way; unset, they are the defaults of ``DecodeLimits()``."""
    for settings_class in (ListenerSettings, WorkerSettings, WebSettings):
        assert settings_class().decode_limits() == LIMITS
    monkeypatch.setenv("CXR_MAX_ROWS", "9000")
    monkeypatch.setenv("CXR_MIN_DYNAMIC_RANGE", "0.2")
    for settings_class in (ListenerSettings, WorkerSettings, WebSettings):
        limits = settings_class().decode_limits()
        assert (limits.max_rows, limits.min_dynamic_range) == (9000, 0.2)
        assert limits == LIMITS.model_copy(update={"max_rows": 9000, "min_dynamic_range": 0.2})
    assert WebConfig.from_settings(WebSettings()).limits.max_rows == 9000
    monkeypatch.setenv("CXR_MAX_ROWS", "0")
    with pytest.raises(ValueError, match="max_rows"):
        WorkerSettings()


# ---------------------------------------------------------------------------------------
# Pixel Data length (truncated transfers)


@pytest.mark.parametrize("cut_file", [False, True], ids=["short-element", "cut-file"])
def test_truncated_native_pixel_data_is_refused(tmp_path: Path, cut_file: bool) -> None:
    path = poison.truncated_pixel_data(tmp_path / "t.dcm", keep=0.5, cut_file=cut_file)
    with pytest.raises(PixelDataLengthError) as exc:
        check_instance(path, LIMITS)
    _refused(exc, STATUS_PIXEL_DATA_LENGTH, "65,536 of the 131,072 bytes", "truncated", "resend")
    assert "python-gdcm" not in exc.value.reason
    with pytest.raises(PixelDataLengthError):
        read_checked_dataset(path.read_bytes(), LIMITS)


@pytest.mark.parametrize("name", ["rg1-j2k-monochrome1-16bit.dcm", "rsna-normal-1.dcm"])
def test_cut_encapsulated_transfer_is_refused(tmp_path: Path, name: str) -> None:
    data = next(p for p in SAMPLES if p.name == name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(PixelDataLengthError) as exc:
        check_instance(cut, LIMITS)
    _refused(exc, STATUS_PIXEL_DATA_LENGTH, "ends before its last fragment", "resend")


def test_zero_length_and_missing_pixel_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PixelDataLengthError) as exc:
        check_instance(poison.zero_length_pixel_data(tmp_path / "z.dcm"), LIMITS)
    _refused(exc, STATUS_PIXEL_DATA_LENGTH, "empty (0 bytes)", "resend")

    ds = poison.dx_dataset()
    del ds.PixelData
    del ds.Rows
    with pytest.raises(PixelDataLengthError) as exc:
        check_instance(poison.write(ds, tmp_path / "none.dcm"), LIMITS)
    _refused(exc, STATUS_PIXEL_DATA_LENGTH, "no Pixel Data")


def _header(rows: int, columns: int, bits: int = 8, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, columns, bits, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_uncompressed_length_rules() -> None:
    odd = _header(15, 15)  # 225 bytes, padded to 226 on the wire
    check_uncompressed_length(odd, 225)
    check_uncompressed_length(odd, 226)
    check_uncompressed_length(odd, 10_000)  # longer is readable; decoders ignore the rest
    with pytest.raises(PixelDataLengthError, match="224 of the 225 bytes"):
        check_uncompressed_length(odd, 224)
    assert expected_pixel_data_length(_header(10, 10, 1)) == 13  # bit-packed
    ybr = _header(4, 4, SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422")
    assert expected_pixel_data_length(ybr) == 32 == get_expected_length(ybr, "bytes")
    rgb = _header(4, 4, 16, SamplesPerPixel=3, NumberOfFrames=2)
    assert expected_pixel_data_length(rgb) == 192 == get_expected_length(rgb, "bytes")
    jpeg = _header(1024, 1024)
    jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    check_uncompressed_length(jpeg, 1000)  # compressed: the decoder judges the stream
    with pytest.raises(PixelDataLengthError, match="empty"):
        check_uncompressed_length(jpeg, 0)


# ---------------------------------------------------------------------------------------
# Blank or constant frames


@pytest.mark.parametrize(
    "build", [poison.blank_frame, poison.constant_frame], ids=["blank", "constant"]
)
def test_blank_and_constant_frames_are_refused_after_decoding(
    tmp_path: Path, build: object
) -> None:
    path = build(tmp_path / "f.dcm")  # type: ignore[operator]
    ds = read_checked_dataset(path, LIMITS)  # the header is fine
    image = decode_dataset(ds)
    assert is_blank_or_constant(image.pixels)
    with pytest.raises(BlankImageError) as exc:
        check_not_blank(image.pixels, LIMITS)
    assert isinstance(exc.value, ImagingError)
    assert exc.value.reason.startswith("blank or constant image")
    assert "check the modality's export" in exc.value.reason
    assert exc.value.error_comment == "blank or constant image"


def test_blank_check_is_robust_to_a_few_outliers_and_passes_real_contrast() -> None:
    frame = np.full((512, 512), 0.4, np.float32)
    frame[:20, :20] = 1.0  # a burned-in label: 0.15 % of the pixels
    assert is_blank_or_constant(frame)
    assert dynamic_range(np.zeros((0,), np.float32)) == 0.0
    assert dynamic_range(np.full((4, 4), np.nan, np.float32)) == 0.0
    real = chest_like(512).astype(np.float32) / 255
    assert dynamic_range(real) > 0.1
    assert not is_blank_or_constant(real)
    check_not_blank(real, LIMITS)
    faint = (0.5 + 0.004 * real).astype(np.float32)  # 1/250 of the display range
    assert is_blank_or_constant(faint)
    assert not is_blank_or_constant(faint, min_dynamic_range=0.001)


# ---------------------------------------------------------------------------------------
# Hostile bytes: a typed answer, never a crash


def test_non_dicom_input_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(UndecodableError):
        check_instance(b"not dicom at all" * 20, LIMITS)
    no_ts = poison.dx_dataset()
    del no_ts.file_meta.TransferSyntaxUID
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, no_ts.file_meta, enforce_standard=False)
    path = tmp_path / "no-ts.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue())
    with pytest.raises(UndecodableError, match="Transfer Syntax"):
        check_instance(path, LIMITS)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    deflated=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
)
def test_mutated_files_get_a_typed_answer(
    tmp_path: Path, deflated: bool, edits: list[tuple[int, int]], cut: int
) -> None:
    path = tmp_path / ("d.dcm" if deflated else "n.dcm")
    if not path.exists():
        if deflated:
            poison.deflated_dx(path, rows=48, columns=40)
        else:
            poison.write(poison.dx_dataset(chest_like(48)), path)
    data = bytearray(path.read_bytes())
    for offset, value in edits:
        data[offset % len(data)] = value
    data = data[: max(132, len(data) - cut)]
    try:
        check_instance(bytes(data), LIMITS)
    except ImagingError:
        pass
