"""cxr_imaging decoding: MONOCHROME1, bit depth, J2K vs uncompressed, VOI, rescale, JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxr_imaging import (
    DecodedImage,
    ImagingError,
    NotAnImageError,
    UndecodableError,
    decode_dataset,
    load_image,
)

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_triage" / "samples"
DECODABLE = sorted(p for p in SAMPLES.rglob("*.dcm") if p.name != "nm-jpeg-extended.dcm")


def make_dataset(arr: np.ndarray, **attrs: object) -> Dataset:
    """A minimal uncompressed greyscale DICOM dataset around ``arr``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    bits = int(attrs.pop("BitsStored", arr.dtype.itemsize * 8))  # type: ignore[call-overload]
    ds.set_pixel_data(arr, "MONOCHROME2", bits)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_every_decodable_sample_gives_float32_in_unit_range() -> None:
    assert len(DECODABLE) == 15
    for path in DECODABLE:
        img = load_image(path)
        assert isinstance(img, DecodedImage)
        assert img.source == "dicom"
        assert img.pixels.dtype == np.float32
        assert img.pixels.shape == (img.rows, img.columns)
        assert float(img.pixels.min()) >= 0.0, path.name
        assert float(img.pixels.max()) <= 1.0, path.name
        assert float(img.pixels.std()) > 0.05, path.name


def test_monochrome1_is_inverted_against_its_monochrome2_twin() -> None:
    mono2 = load_image(SAMPLES / "siim-chest-1.dcm")
    mono1 = load_image(SAMPLES / "fake-monochrome1.dcm")
    assert (mono2.photometric, mono1.photometric) == ("MONOCHROME2", "MONOCHROME1")
    corr = np.corrcoef(mono1.pixels.ravel(), mono2.pixels.ravel())[0, 1]
    assert corr < -0.99
    assert float(np.abs(mono1.pixels - (1.0 - mono2.pixels)).mean()) < 1e-6


def test_rg1_monochrome1_chest_is_displayed_bone_bright() -> None:
    img = load_image(SAMPLES / "rg1-j2k-monochrome1-16bit.dcm")
    p = img.pixels
    # lungs (upper-centre-left) are air: dark after MONOCHROME1 inversion;
    # the spine (central column) is dense: brighter than the lungs.
    lung = p[600:900, 400:700].mean()
    spine = p[600:900, 880:960].mean()
    assert spine > lung + 0.1


def test_16_bit_and_8_bit_give_the_same_unit_range() -> None:
    eight = load_image(SAMPLES / "rsna-normal-1.dcm")
    assert eight.bits_stored == 8
    assert float(eight.pixels.min()) == 0.0
    assert float(eight.pixels.max()) == 1.0
    sixteen = load_image(SAMPLES / "rg1-j2k-monochrome1-16bit.dcm")
    assert sixteen.bits_stored == 15
    assert float(sixteen.pixels.min()) < 0.15
    assert float(sixteen.pixels.max()) > 0.95
    assert float(sixteen.pixels.max() - sixteen.pixels.min()) > 0.8


def test_same_image_at_8_and_16_bits_decodes_identically() -> None:
    ds8 = pydicom.dcmread(SAMPLES / "nih-nofinding-1.dcm")
    arr8 = ds8.pixel_array
    ds16 = make_dataset(arr8.astype(np.uint16) * 257, BitsStored=16)
    a, b = decode_dataset(ds8).pixels, decode_dataset(ds16).pixels
    assert b.max() == 1.0
    assert float(np.abs(a - b).max()) < 1e-5


def test_j2k_and_uncompressed_copy_decode_nearly_the_same(tmp_path: Path) -> None:
    j2k_path = SAMPLES / "rg1-j2k-monochrome1-16bit.dcm"
    ds = pydicom.dcmread(j2k_path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000
    arr = ds.pixel_array
    ds.set_pixel_data(arr, "MONOCHROME1", int(ds.BitsStored))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = tmp_path / "rg1-uncompressed.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    compressed, plain = load_image(j2k_path), load_image(out)
    assert plain.photometric == "MONOCHROME1"
    assert compressed.pixels.shape == plain.pixels.shape == (1955, 1841)
    assert float(np.abs(compressed.pixels - plain.pixels).mean()) < 0.01


def test_jpeg_path_equals_pillow_luminance_over_255(tmp_path: Path) -> None:
    grey = pydicom.dcmread(SAMPLES / "derived" / "kermany-pneumonia-1.dcm").pixel_array
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    path = tmp_path / "rgb-grey.jpeg"
    rgb.save(path, quality=75)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("L"), np.float32) / 255
    decoded = load_image(path)
    assert decoded.source == "image"
    assert decoded.photometric is None
    assert decoded.pixels.dtype == np.float32
    assert np.array_equal(decoded.pixels, expected)
    assert np.array_equal(load_image(path.read_bytes()).pixels, expected)
    assert np.array_equal(load_image(str(path)).pixels, expected)


def test_16_bit_png_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(arr).save(path)
    decoded = load_image(path)
    assert decoded.bits_stored == 16
    np.testing.assert_allclose(decoded.pixels, arr / 65535.0, rtol=0, atol=1e-6)


def test_derived_sample_decodes_exactly_like_its_grey_jpeg_values() -> None:
    ds = pydicom.dcmread(SAMPLES / "derived" / "kermany-normal-1.dcm")
    expected = ds.pixel_array.astype(np.float32) / 255
    assert np.array_equal(decode_dataset(ds).pixels, expected)


def test_voi_window_is_applied_and_clips() -> None:
    arr = np.array([[0, 300, 400, 500, 600, 700, 4000]], dtype=np.uint16)
    ds = make_dataset(arr, BitsStored=12, WindowCenter=500, WindowWidth=200)
    p = decode_dataset(ds).pixels[0]
    assert p[0] == 0.0
    assert p[1] == 0.0
    assert p[2] == pytest.approx(0.0, abs=0.01)  # lower edge of the window
    assert p[3] == pytest.approx(0.5, abs=0.01)  # centre
    assert p[4] == pytest.approx(1.0, abs=0.01)  # upper edge
    assert p[5] == 1.0
    assert p[6] == 1.0


def test_first_window_is_used_when_several_are_given() -> None:
    arr = np.array([[100, 200, 300]], dtype=np.uint16)
    ds = make_dataset(arr, BitsStored=12, WindowCenter=[200, 2000], WindowWidth=[200, 4000])
    p = decode_dataset(ds).pixels[0]
    assert p[0] == pytest.approx(0.0, abs=0.01)
    assert p[1] == pytest.approx(0.5, abs=0.01)
    assert p[2] == pytest.approx(1.0, abs=0.01)


def test_modality_rescale_is_applied_before_the_window() -> None:
    # stored 500 -> 2*500-1000 = 0 (window centre); 250 -> -500; 750 -> +500
    arr = np.array([[250, 500, 750]], dtype=np.int16)
    ds = make_dataset(
        arr, BitsStored=16, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1000
    )
    p = decode_dataset(ds).pixels[0]
    assert p[0] == pytest.approx(0.0, abs=0.01)
    assert p[1] == pytest.approx(0.5, abs=0.01)
    assert p[2] == pytest.approx(1.0, abs=0.01)


def test_without_window_robust_percentiles_ignore_a_hot_pixel() -> None:
    arr = np.tile(np.arange(1000, dtype=np.uint16), (100, 1))
    arr[0, 0] = 60000
    p = decode_dataset(make_dataset(arr, BitsStored=16)).pixels
    assert p[50, 500] == pytest.approx(0.5, abs=0.02)
    assert p[0, 0] == 1.0
    assert p[50, 0] == 0.0


def test_monochrome1_inversion_happens_after_the_window() -> None:
    arr = np.array([[300, 500, 700]], dtype=np.uint16)
    ds = make_dataset(arr, BitsStored=12, WindowCenter=500, WindowWidth=200)
    ds.PhotometricInterpretation = "MONOCHROME1"
    p = decode_dataset(ds).pixels[0]
    assert p[0] == 1.0
    assert p[1] == pytest.approx(0.5, abs=0.01)
    assert p[2] == 0.0


def test_multi_frame_gives_the_first_frame() -> None:
    frames = np.zeros((2, 8, 8), dtype=np.uint8)
    frames[0] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    frames[1] = 255 - frames[0]
    ds = make_dataset(frames, BitsStored=8)
    assert int(ds.NumberOfFrames) == 2
    p = decode_dataset(ds).pixels
    assert p.shape == (8, 8)
    assert p[0, 0] == 0.0
    assert p[7, 7] == 1.0


def test_rgb_dicom_becomes_luminance() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(rgb, "RGB", 8)
    p = decode_dataset(ds).pixels
    assert p.shape == (4, 4)
    np.testing.assert_allclose(p, 0.299, atol=1e-4)


def test_dicom_without_preamble_is_detected(tmp_path: Path) -> None:
    arr = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    ds = make_dataset(arr, BitsStored=12)
    buf = io.BytesIO()
    ds.save_as(buf)  # enforce_file_format=False: no preamble written
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    img = load_image(data)
    assert img.source == "dicom"
    assert img.pixels.shape == (64, 64)


def test_undecodable_pixel_data_names_transfer_syntax_and_plugin() -> None:
    with pytest.raises(UndecodableError, match=r"1\.2\.840\.10008\.1\.2\.4\.51") as info:
        load_image(SAMPLES / "nm-jpeg-extended.dcm")
    assert "pylibjpeg-libjpeg" in str(info.value)
    assert isinstance(info.value, ImagingError)
    assert info.value.__cause__ is not None


def test_dataset_without_pixel_data_is_not_an_image() -> None:
    ds = pydicom.dcmread(SAMPLES / "ct-small.dcm", stop_before_pixels=True)
    with pytest.raises(NotAnImageError, match="no PixelData"):
        decode_dataset(ds)


def test_random_bytes_are_not_an_image() -> None:
    with pytest.raises(NotAnImageError):
        load_image(b"this is neither a DICOM file nor a JPEG" * 10)


# --- the lookup-table path (8/16-bit images larger than their value range) -----------


def _direct(ds: Dataset) -> np.ndarray:
    """The display pipeline run on every pixel (what the lookup table must equal)."""
    from pydicom.pixels.processing import apply_modality_lut
    from pydicom.pixels.utils import pixel_array

    from cxr_imaging.decode import _apply_voi, _invert

    arr = pixel_array(ds, index=0)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    return _invert(_apply_voi(apply_modality_lut(arr, ds), ds, "test"), photometric)


def _voi_lut_item(first: int, entries: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, 12]
    lut = (np.sqrt(np.linspace(0.0, 1.0, entries)) * 4095).astype("<u2")
    item.LUTData = [int(v) for v in lut]
    return item


LARGE = np.random.default_rng(7)


@pytest.mark.parametrize(
    ("dtype", "bits", "attrs", "photometric"),
    [
        (np.uint16, 12, {"WindowCenter": 1800, "WindowWidth": 1200}, "MONOCHROME2"),
        (np.uint16, 15, {"WindowCenter": 15000, "WindowWidth": 9000}, "MONOCHROME1"),
        (
            np.int16,
            16,
            {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 0, "WindowWidth": 900},
            "MONOCHROME2",
        ),
        (np.uint8, 8, {"WindowCenter": 128, "WindowWidth": 100}, "MONOCHROME1"),
        (np.uint16, 12, {"VOILUTSequence": "lut"}, "MONOCHROME2"),
        (np.uint16, 12, {"WindowCenter": 100, "WindowWidth": 0}, "MONOCHROME2"),  # invalid
        (np.uint16, 16, {}, "MONOCHROME1"),  # no window: percentiles of the image
    ],
)
def test_the_lookup_table_equals_the_pipeline_run_on_every_pixel(
    dtype: type, bits: int, attrs: dict[str, object], photometric: str
) -> None:
    info = np.iinfo(dtype)
    low, high = max(info.min, -(2 ** (bits - 1)) if info.min < 0 else 0), min(info.max, 2**bits - 1)
    arr = LARGE.integers(low, high + 1, size=(400, 300)).astype(dtype)  # > 65,536 pixels
    values = dict(attrs)
    if values.get("VOILUTSequence") == "lut":
        values["VOILUTSequence"] = [_voi_lut_item(0, 4096)]
    ds = make_dataset(arr, BitsStored=bits, **values)
    ds.PhotometricInterpretation = photometric
    decoded = decode_dataset(ds).pixels
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, _direct(ds))


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_committed_samples_decode_exactly_as_the_pipeline_on_every_pixel(path: Path) -> None:
    ds = pydicom.dcmread(path)
    if ds.get("SamplesPerPixel", 1) != 1 or "PALETTE" in str(ds.PhotometricInterpretation):
        pytest.skip("colour: not the greyscale pipeline")
    np.testing.assert_array_equal(decode_dataset(ds).pixels, _direct(ds))
