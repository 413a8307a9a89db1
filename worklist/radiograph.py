"""What the study page shows from a stored instance: the patient context and the plain
radiograph as a downscaled PNG.

The patient context is read once, at ingest, from the header the listener parses anyway
(``cxr_ingest.header.patient_context``), and kept on the instance row (migration 0008):
a study view reads it from there and never opens the stored file for it. Rows received
before that revision have none; their header is read from the stored file, bounded
(``cxr_imaging.limits``, the same checks the worker applies before any decode). The
context is patient data: it is shown to signed-in radiologists only, never logged, and
no export (audit, answers, worklist JSON) selects it.

The radiograph is rendered the way the worker renders the heatmap's base image (grey,
longest side at most 512 px, bilinear), so the two line up exactly when overlaid. When
the header says text is burned into the pixels (BurnedInAnnotation YES) the radiograph is
withheld, as the heatmap is drawn on a neutral field then: a PNG never carries patient
data. PNGs carry no text chunks. Nothing here logs a header value.

For the study page's viewer the radiograph is also served at full resolution, at its
modality values (after the Modality LUT or rescale), so window/level is done in the browser
on the real values (:func:`full_resolution`, :func:`encode_full`): the same limits, the
same withholding rule and the same kind of cache as the PNG.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array
from sqlalchemy import Engine

from cxr_common.errors import CxrTriageError
from cxr_common.storage import read_instance
from cxr_db.instances.reads import stored_patient_context
from cxr_imaging import decode_dataset
from cxr_imaging.age import derive_age, format_age
from cxr_imaging.decode import PERCENTILES
from cxr_imaging.errors import UndecodableError
from cxr_imaging.limits import DecodeLimits, check_instance, read_checked_dataset

log = logging.getLogger(__name__)

MAX_SIZE = 512  # the heatmap's longest side (cxr_model.heatmaps.render_overlay_png)
_CACHE_SIZE = 64
_FULL_CACHE_SIZE = 8  # a 3000 x 3000 radiograph is 18 MB as uint16, about 6 MB gzipped
_U16_MAX = 65535
#: The full-resolution body: this magic, a little-endian uint32 header length, the JSON
#: header (space-padded so the pixels start on an 8-byte boundary), then Rows x Columns
#: little-endian uint16 stored values, row by row. Modality value = stored x slope +
#: intercept. Served gzip-encoded (``Content-Encoding: gzip``).
FULL_MAGIC = b"CXRU16\x00\x01"
FULL_MEDIA_TYPE = "application/vnd.cxr-triage.u16"


@dataclass(frozen=True)
class PatientContext:
    """Shown to signed-in radiologists on the study page; never logged, audited or stored."""

    name: str | None
    patient_id: str | None
    age: str | None
    sex: str | None
    study_date: str | None
    body_part: str | None
    view: str | None
    burned_in_annotation: bool


#: A header, or the patient context stored with the instance (DICOM keywords as keys).
HeaderValues = Dataset | Mapping[str, Any]


def _text(ds: HeaderValues, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    out = str(value).strip().rstrip("\x00").strip()
    return out or None


def _person_name(ds: HeaderValues) -> str | None:
    """``Family^Given^Middle^Prefix^Suffix`` as ``Family, Given Middle``."""
    raw = _text(ds, "PatientName")
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in parts[2:3] if p)
    first = " ".join(p for p in (given, rest) if p)
    return ", ".join(p for p in (family, first) if p) or None


def _date(value: str | None) -> str | None:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def has_burned_in_annotation(ds: HeaderValues) -> bool:
    """The worker's rule (``cxr_model.heatmaps.has_burned_in_annotation``)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def patient_context(
    storage_uri: str,
    engine: Engine | None = None,
    sop_instance_uid: str | None = None,
    *,
    limits: DecodeLimits | None = None,
) -> PatientContext:
    """The patient context of one stored instance: as recorded at ingest (given the
    ``engine`` and the instance's ``sop_instance_uid``), else from its header (bounded
    read). Raises a ``CxrTriageError`` when the file must be read and is missing or
    unreadable (the message has no values)."""
    if engine is not None and sop_instance_uid is not None:
        stored = stored_patient_context(engine, sop_instance_uid)
        if stored is not None:
            return _context(stored, stored.get("age_years"))
    header = check_instance(_header_source(storage_uri), limits or DecodeLimits()).dataset
    age = derive_age(header)
    return _context(header, age.years if age.known else None)


def _header_source(storage_uri: str) -> Path | bytes:
    """A stored file's path (its header is read with bounded reads), or its bytes."""
    parsed = urlparse(storage_uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if path.is_file():
            return path
    return read_instance(storage_uri)


def _context(values: HeaderValues, age_years: Any) -> PatientContext:
    years = float(age_years) if isinstance(age_years, int | float) else None
    return PatientContext(
        name=_person_name(values),
        patient_id=_text(values, "PatientID"),
        age=format_age(years) if years is not None else None,
        sex=_text(values, "PatientSex"),
        study_date=_date(_text(values, "StudyDate")),
        body_part=_text(values, "BodyPartExamined"),
        view=_text(values, "ViewPosition"),
        burned_in_annotation=has_burned_in_annotation(values),
    )


class Withheld(CxrTriageError):
    """The radiograph may not be shown as a picture (text burned into the pixels)."""


def render_png(pixels01: np.ndarray, max_size: int = MAX_SIZE) -> bytes:
    """A grey PNG of ``pixels01`` (HxW in [0, 1]) sized as the worker sizes heatmaps."""
    grey = np.clip(np.asarray(pixels01, dtype=np.float32), 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {grey.shape}")
    img = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L")
    scale = min(1.0, max_size / max(img.size))
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass(frozen=True)
class FullImage:
    """A radiograph at full resolution for the viewer: ``stored`` (Rows x Columns uint16)
    times ``slope`` plus ``intercept`` are the modality values; the default window is in
    modality units; ``invert`` is true for MONOCHROME1 (low values shown bright)."""

    stored: npt.NDArray[np.uint16]
    slope: float
    intercept: float
    window_center: float
    window_width: float
    invert: bool

    def header(self) -> dict[str, Any]:
        rows, columns = self.stored.shape
        return {
            "rows": int(rows),
            "columns": int(columns),
            "slope": self.slope,
            "intercept": self.intercept,
            "window": {"center": self.window_center, "width": self.window_width},
            "invert": self.invert,
            "min": int(self.stored.min()) if self.stored.size else 0,
            "max": int(self.stored.max()) if self.stored.size else 0,
        }


def _first(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) DS element, or None."""
    if value is None:
        return None
    try:
        first = value[0] if not isinstance(value, str | bytes) else value
    except (TypeError, IndexError):
        first = value
    try:
        return float(first)
    except (TypeError, ValueError):
        return None


def _header_window(ds: Dataset) -> tuple[float, float] | None:
    """The file's first window (modality units) when it is a usable LINEAR window."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if ds.get("VOILUTSequence") or function != "LINEAR":
        return None
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or not np.isfinite(center) or not width >= 1:
        return None
    return center, width


def _to_stored(values: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint16], float, float]:
    """``values`` as uint16 with (slope, intercept): exact when they are integers spanning
    at most 65,536 values (every CR/DX/CT image), else a linear quantisation."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= _U16_MAX and values.dtype.kind in "iu":
        return (values - int(lo)).astype(np.uint16), 1.0, lo
    m = np.asarray(values, dtype=np.float64)
    if hi - lo <= _U16_MAX and bool(np.all(m == np.round(m))):
        return (m - lo).astype(np.uint16), 1.0, lo
    slope = (hi - lo) / _U16_MAX if hi > lo else 1.0
    stored = np.clip(np.round((m - lo) / slope), 0, _U16_MAX).astype(np.uint16)
    return stored, slope, lo


def _modality(arr: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[Any]:
    """The modality values; in integers when the rescale is integral (most CR/DX/CT),
    which keeps them exact and skips a float pass over the image."""
    slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
    slope, intercept = (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)
    if (
        "ModalityLUTSequence" not in ds
        and arr.dtype.kind in "iu"
        and slope.is_integer()
        and intercept.is_integer()
    ):
        return arr.astype(np.int64) * int(slope) + int(intercept)
    return np.asarray(apply_modality_lut(arr, ds))


def full_resolution(ds: Dataset) -> FullImage:
    """The first frame at its modality values (grey), or, for colour data, the display
    luminance on 0..4095. The default window is the file's first LINEAR window, else the
    0.5-99.5 percentiles of the modality values (what ``decode_dataset`` shows)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    sop = str(ds.get("SOPInstanceUID", "<no SOP Instance UID>"))
    if photometric in ("MONOCHROME1", "MONOCHROME2") and "PixelData" in ds:
        try:
            arr = pixel_array(ds, index=0)
        except Exception as exc:  # decoders raise a zoo of types; all mean "cannot decode"
            raise UndecodableError(f"cannot decode pixel data of {sop}") from exc
        if arr.ndim != 2 or arr.size == 0:
            raise UndecodableError(f"unexpected pixel array shape {arr.shape} in {sop}")
        modality = _modality(arr, ds)
        stored, slope, intercept = _to_stored(modality)
        window = _header_window(ds)
        if window is None:
            lo, hi = (float(v) for v in np.percentile(modality, PERCENTILES))
            if hi <= lo:
                lo, hi = float(modality.min()), float(modality.max())
            window = ((lo + hi) / 2, max(1.0, hi - lo))
        return FullImage(stored, slope, intercept, *window, photometric == "MONOCHROME1")
    grey = decode_dataset(ds).pixels  # colour or float data: the display luminance
    stored = np.round(np.clip(grey, 0.0, 1.0) * 4095.0).astype(np.uint16)
    return FullImage(stored, 1.0, 0.0, 2047.5, 4096.0, False)


def encode_full(image: FullImage) -> bytes:
    """The full-resolution body (``FULL_MAGIC``, header, pixels), gzip-compressed."""
    header = json.dumps(image.header(), separators=(",", ":")).encode()
    start = len(FULL_MAGIC) + 4 + len(header)
    header += b" " * (-start % 8)
    pixels = np.ascontiguousarray(image.stored, dtype="<u2").tobytes()
    body = FULL_MAGIC + struct.pack("<I", len(header)) + header + pixels
    return gzip.compress(body, compresslevel=1, mtime=0)


def decode_full(data: bytes) -> tuple[dict[str, Any], npt.NDArray[np.uint16]]:
    """The header and pixels of an ``encode_full`` body, gzipped or not (for tests and
    tools)."""
    body = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    if not body.startswith(FULL_MAGIC):
        raise ValueError("not a full-resolution radiograph body")
    at = len(FULL_MAGIC)
    (length,) = struct.unpack_from("<I", body, at)
    header: dict[str, Any] = json.loads(body[at + 4 : at + 4 + length])
    pixels = np.frombuffer(body, dtype="<u2", offset=at + 4 + length)
    return header, pixels.reshape(header["rows"], header["columns"]).astype(np.uint16)


class _Lru:
    """Bytes by key, least recently used dropped first; thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: str, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: a decode may take a second
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


class RadiographCache:
    """Rendered radiographs by storage URI (512 px PNGs and full-resolution bodies), least
    recently used dropped first."""

    def __init__(
        self,
        size: int = _CACHE_SIZE,
        limits: DecodeLimits | None = None,
        full_size: int = _FULL_CACHE_SIZE,
    ) -> None:
        self._limits = limits or DecodeLimits()
        self._png = _Lru(size)
        self._full = _Lru(full_size)

    def _dataset(self, storage_uri: str) -> Dataset:
        ds = read_checked_dataset(read_instance(storage_uri), self._limits)
        if has_burned_in_annotation(ds):
            raise Withheld("text is burned into this image's pixels; view it in the PACS")
        return ds

    def png(self, storage_uri: str) -> bytes:
        """The radiograph's PNG; raises ``Withheld`` or another ``CxrTriageError``."""
        return self._png.get_or_make(
            storage_uri, lambda: render_png(decode_dataset(self._dataset(storage_uri)).pixels)
        )

    def full(self, storage_uri: str) -> bytes:
        """The radiograph at full resolution, gzipped (``encode_full``); raises
        ``Withheld``, ``InputRefusedError`` (over the limits) or another
        ``CxrTriageError``."""
        return self._full.get_or_make(
            storage_uri, lambda: encode_full(full_resolution(self._dataset(storage_uri)))
        )
