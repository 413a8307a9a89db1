"""Decode DICOM and ordinary image files to one float32 greyscale convention.

Every image leaves this module as :class:`DecodedImage`: ``pixels`` is float32, HxW,
values in [0, 1], MONOCHROME2 convention (bright = dense, i.e. bone is white).

DICOM goes through the radiology display pipeline (PS3.3 C.11 / PS3.4 N.2):
stored values → Modality LUT or rescale slope/intercept → VOI LUT or the first
window centre/width (or, when the file has neither, a min–max stretch over the
0.5–99.5 percentiles of the modality values) → MONOCHROME1 inversion. Colour
DICOM (RGB, YBR, PALETTE COLOR) becomes ITU-R 601 luminance.

JPEG/PNG/TIFF go through Pillow: 8-bit data become exactly
``np.asarray(img.convert("L"), np.float32) / 255`` (so training on JPEGs and
inference on DICOM wrappers of the same JPEGs see identical inputs);
16-bit greyscale is scaled by 65535.

Errors: see :mod:`cxr_imaging.errors`. Log lines carry UIDs only, never patient data.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array as _pixel_array
from pydicom.uid import UID

from cxr_imaging.errors import NotAnImageError, UndecodableError
from cxr_imaging.limits import check_codestream
from cxr_imaging.transfer_syntaxes import plugin_hint

__all__ = ["DecodedImage", "decode_dataset", "load_image"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

#: Robust percentiles used when a DICOM carries no VOI LUT and no window.
PERCENTILES: tuple[float, float] = (0.5, 99.5)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded greyscale image.

    ``pixels`` is float32 HxW in [0, 1], MONOCHROME2 convention (bright = dense/bone).
    ``source`` is ``"dicom"`` or ``"image"``. ``photometric`` and ``bits_stored`` are
    the DICOM header values (``None`` for ``"image"`` except ``bits_stored``, which is
    the Pillow bit depth, 8 or 16, where known).
    """

    pixels: FloatArray
    source: str
    photometric: str | None
    bits_stored: int | None
    rows: int
    columns: int


def _ts_label(ds: Dataset) -> tuple[str | None, str]:
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid is None:
        return None, "unknown transfer syntax"
    uid = UID(str(tsuid))
    return str(uid), f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _luminance(rgb: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = rgb[..., :3].astype(np.float64) @ _LUMA
    return out


def _stretch(values: npt.NDArray[Any], lo: float, hi: float) -> FloatArray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _percentile_stretch(values: npt.NDArray[Any]) -> FloatArray:
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        lo, hi = float(np.min(values)), float(np.max(values))
    return _stretch(values, lo, hi)


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing`` for ``ds`` (PS3.3 C.11.2.1.2)."""
    y_min: float
    y_max: float
    bits = int(ds.get("BitsStored", 16) or 16)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0) or 0) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min = y_min * float(slope) + float(intercept)
        y_max = y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _voi_lut_output_range(item: Dataset) -> tuple[float, float]:
    """Range actually used by a VOI LUT's data (falls back to its declared bit depth)."""
    bits = int(item.LUTDescriptor[2])
    data = item.get("LUTData")
    if data is None:
        return 0.0, float(2**bits - 1)
    if isinstance(data, bytes | bytearray):
        values: npt.NDArray[Any] = np.frombuffer(data, dtype="<u2" if bits > 8 else "u1")
    else:
        values = np.asarray(data if isinstance(data, list | tuple) else [data])
    if values.size == 0:
        return 0.0, float(2**bits - 1)
    return float(values.min()), float(values.max())


def _elementwise_voi(modality: npt.NDArray[Any], ds: Dataset, sop: str) -> FloatArray | None:
    """The VOI LUT or the first window, stretched to [0, 1]; None when the file has
    neither (or only an invalid window): then the image's percentiles decide."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        out = apply_voi_lut(modality, ds, index=0, prefer_lut=True)
        return _stretch(out, *_voi_lut_output_range(voi_seq[0]))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            out = apply_voi_lut(modality, ds, index=0, prefer_lut=False)
        except ValueError as exc:  # e.g. WindowWidth < 1 for LINEAR
            logger.warning("ignoring invalid window in %s: %s", sop, exc)
        else:
            return _stretch(out, *_window_output_range(ds))
    return None


def _apply_voi(modality: npt.NDArray[Any], ds: Dataset, sop: str) -> FloatArray:
    out = _elementwise_voi(modality, ds, sop)
    return _percentile_stretch(modality) if out is None else out


def _invert(pixels: FloatArray, photometric: str) -> FloatArray:
    return (1.0 - pixels).astype(np.float32) if photometric == "MONOCHROME1" else pixels


#: Integer types whose every value fits a lookup table: (the table's index type, size).
_TABLE_INDEX: dict[np.dtype[Any], tuple[np.dtype[Any], int]] = {
    np.dtype(np.uint8): (np.dtype(np.uint8), 1 << 8),
    np.dtype(np.int8): (np.dtype(np.uint8), 1 << 8),
    np.dtype(np.uint16): (np.dtype(np.uint16), 1 << 16),
    np.dtype(np.int16): (np.dtype(np.uint16), 1 << 16),
}


def _grey_display(arr: npt.NDArray[Any], ds: Dataset, sop: str, photometric: str) -> FloatArray:
    """Stored greyscale values → [0, 1] MONOCHROME2: Modality LUT, VOI, inversion.

    Every step but the percentile stretch is a function of the stored value alone, so
    for 8- and 16-bit data the steps run once on every possible value (at most 65,536)
    and the image is a lookup in that table: the same pydicom functions on the same
    values in the same dtype, so the result is bit-identical to running them on the
    image (tests/unit/test_imaging_decode.py), and 5-10x faster on a 3.6 MP radiograph."""
    entry = _TABLE_INDEX.get(arr.dtype)
    if entry is None or arr.size <= entry[1]:
        pixels = _apply_voi(apply_modality_lut(arr, ds), ds, sop)
        return _invert(pixels, photometric)
    index, size = entry
    domain = np.arange(size, dtype=index).view(arr.dtype)
    table = _elementwise_voi(apply_modality_lut(domain, ds), ds, sop)
    if table is None:  # no (valid) window: the percentiles of this image decide
        return _invert(_percentile_stretch(apply_modality_lut(arr, ds)), photometric)
    table = _invert(np.ascontiguousarray(table, dtype=np.float32), photometric)
    looked_up: FloatArray = table[arr.view(index)]
    return looked_up


def decode_dataset(ds: Dataset) -> DecodedImage:
    """Decode a DICOM dataset through the trusted display pipeline (module docstring).

    Multi-frame datasets give their first frame. Raises :class:`NotAnImageError`
    without PixelData, :class:`~cxr_imaging.limits.CodestreamSizeError` when a JPEG or
    JPEG 2000 frame's codestream declares another size than the header (checked before
    decoding), and :class:`UndecodableError` when no installed plugin can decode the
    pixel data.
    """
    sop = str(ds.get("SOPInstanceUID", "<no SOP Instance UID>"))
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NotAnImageError(f"dataset {sop} has no PixelData")
    tsuid, ts_label = _ts_label(ds)
    # A decoder allocates what the codestream declares: refuse one that disagrees with
    # the header before it can (CodestreamSizeError, an InputRefusedError).
    check_codestream(ds)
    try:
        arr = _pixel_array(ds, index=0)
    except Exception as exc:  # decoders raise a zoo of types; all mean "cannot decode"
        raise UndecodableError(
            f"cannot decode pixel data of {sop} with transfer syntax {ts_label}; "
            f"install {plugin_hint(tsuid)} ({type(exc).__name__}: {exc})"
        ) from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_stored = int(ds.get("BitsStored", 0) or 0) or None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise UndecodableError(f"unexpected pixel array shape {arr.shape} in {sop} ({photometric})")

    pixels: FloatArray
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        depth = 255.0 if rgb.dtype == np.uint8 else 65535.0
        pixels = np.clip(_luminance(rgb) / depth, 0.0, 1.0).astype(np.float32)
    elif arr.ndim == 3:
        # RGB / YBR_* (pydicom converts YBR to RGB by default)
        depth = float(2 ** (bits_stored or 8) - 1)
        pixels = np.clip(_luminance(arr) / depth, 0.0, 1.0).astype(np.float32)
    else:
        pixels = _grey_display(arr, ds, sop, photometric)
    rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source="dicom",
        photometric=photometric,
        bits_stored=bits_stored,
        rows=rows,
        columns=columns,
    )


def _decode_pillow(img: Image.Image) -> DecodedImage:
    mode = img.mode
    pixels: FloatArray
    if mode.startswith("I;16"):
        pixels = (np.asarray(img, dtype=np.float32) / np.float32(65535.0)).astype(np.float32)
        bits: int | None = 16
    elif mode == "I":
        raw = np.asarray(img, dtype=np.float64)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            pixels, bits = np.clip(raw / 65535.0, 0.0, 1.0).astype(np.float32), 16
        else:
            pixels, bits = _percentile_stretch(raw), 32
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float64)
        if raw.size and raw.min() >= 0.0 and raw.max() <= 1.0:
            pixels = np.asarray(raw, dtype=np.float32)
        else:
            pixels = _percentile_stretch(raw)
        bits = 32
    else:
        # L, RGB (grey encoded as RGB), RGBA, P, CMYK, YCbCr, 1, LA...: ITU-R 601 luminance.
        pixels = (np.asarray(img.convert("L"), dtype=np.float32) / 255).astype(
            np.float32, copy=False
        )
        bits = 8
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source="image",
        photometric=None,
        bits_stored=bits,
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]),
    )


def _read_dicom(data: bytes, *, force: bool) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=force)


def load_image(src: Path | str | bytes) -> DecodedImage:
    """Decode a DICOM file or an ordinary image (JPEG, PNG, TIFF...) from a path or bytes.

    DICOM is recognised by its ``DICM`` preamble, or, for files without one, by a
    pydicom read that finds pixel data or a SOP Class UID. Everything else goes to
    Pillow. Raises :class:`NotAnImageError` when neither recognises the input and
    :class:`UndecodableError` when a recognised image cannot be decoded.
    """
    if isinstance(src, bytes | bytearray):
        data = bytes(src)
        label = f"<{len(data)} bytes>"
    else:
        path = Path(src)
        data = path.read_bytes()
        label = path.name

    if data[128:132] == b"DICM":
        try:
            ds = _read_dicom(data, force=False)
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise UndecodableError(f"{label}: DICOM header cannot be parsed: {exc}") from exc
        return decode_dataset(ds)

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _decode_pillow(img)
    except UnidentifiedImageError:
        pass  # not a Pillow format: try DICOM without preamble below
    except (OSError, ValueError, SyntaxError) as exc:
        raise UndecodableError(f"{label}: image cannot be decoded: {exc}") from exc

    try:
        ds = _read_dicom(data, force=True)
    except Exception as exc:  # a forced read of arbitrary bytes fails in many ways
        raise NotAnImageError(f"{label} is neither DICOM nor an image Pillow can open") from exc
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        raise NotAnImageError(f"{label} is neither DICOM nor an image Pillow can open")
    return decode_dataset(ds)
