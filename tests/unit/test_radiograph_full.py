"""The full-resolution radiograph body for the viewer (``worklist.radiograph``): modality
values kept exactly, the default window, MONOCHROME1, and the body round trip."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.dicom_factory import chest_like, make_dataset
from worklist.radiograph import FULL_MAGIC, decode_full, encode_full, full_resolution


def _sixteen_bit(rows: int = 120, columns: int = 80, **tags: object) -> tuple[Dataset, np.ndarray]:
    pixels = (chest_like(rows)[:, :columns].astype(np.uint16) * 16).astype(np.uint16)
    ds = make_dataset(pixels.astype(np.uint8))
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds, pixels


def test_modality_values_survive_exactly_with_the_header_window() -> None:
    ds, pixels = _sixteen_bit(
        RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=[900, 40], WindowWidth=[1800, 400]
    )
    image = full_resolution(ds)
    assert image.stored.shape == (120, 80)
    modality = image.stored.astype(np.float64) * image.slope + image.intercept
    np.testing.assert_array_equal(modality, pixels.astype(np.float64) - 1024)
    assert (image.window_center, image.window_width) == (900.0, 1800.0)
    assert image.invert is False


def test_without_a_window_the_percentiles_decide_and_monochrome1_inverts() -> None:
    ds, pixels = _sixteen_bit(PhotometricInterpretation="MONOCHROME1")
    image = full_resolution(ds)
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    assert image.window_center == pytest.approx((lo + hi) / 2)
    assert image.window_width == pytest.approx(hi - lo)
    assert image.invert is True


def test_fractional_modality_values_are_quantised_to_within_one_step() -> None:
    ds, pixels = _sixteen_bit(RescaleSlope=0.37, RescaleIntercept=2.5)
    image = full_resolution(ds)
    modality = image.stored.astype(np.float64) * image.slope + image.intercept
    expected = pixels.astype(np.float64) * 0.37 + 2.5
    assert np.max(np.abs(modality - expected)) <= image.slope / 2 + 1e-9
    assert image.slope < 0.37  # finer than the file's own step


def test_the_body_round_trips_with_aligned_pixels() -> None:
    ds, _ = _sixteen_bit(rows=33, columns=17)
    image = full_resolution(ds)
    body = encode_full(image)
    header, stored = decode_full(body)
    assert header["rows"] == 33
    assert header["columns"] == 17
    assert header["window"] == {"center": image.window_center, "width": image.window_width}
    assert (header["min"], header["max"]) == (int(stored.min()), int(stored.max()))
    np.testing.assert_array_equal(stored, image.stored)
    raw = gzip.decompress(body)
    assert raw.startswith(FULL_MAGIC)
    (length,) = struct.unpack_from("<I", raw, len(FULL_MAGIC))
    assert (len(FULL_MAGIC) + 4 + length) % 8 == 0, "pixels start 8-byte aligned"
    assert len(raw) == len(FULL_MAGIC) + 4 + length + 33 * 17 * 2
