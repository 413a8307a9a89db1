"""What the study page shows from the stored DICOM files: the patient context (read from
the header on each view, never stored in the database or logged) and the plain radiograph
as a downscaled PNG.

Why from the stored file and not from new database columns: the database, its backups
and every export (audit, answers, worklist JSON) stay free of patient names and IDs; the
listener needs no change; and instances received before this feature have their context
too. The cost is one bounded header read per study view (``cxr_imaging.limits``, the
same checks the worker applies before any decode) and a decode per radiograph, which is
cached in memory.

The radiograph is rendered the way the worker renders the heatmap's base image (grey,
longest side at most 512 px, bilinear), so the two line up exactly when overlaid. When
the header says text is burned into the pixels (BurnedInAnnotation YES) the radiograph is
withheld, as the heatmap is drawn on a neutral field then: a PNG never carries patient
data. PNGs carry no text chunks. Nothing here logs a header value.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from cxr_common.errors import CxrTriageError
from cxr_common.storage import read_instance
from cxr_imaging import decode_dataset
from cxr_imaging.age import derive_age, format_age
from cxr_imaging.limits import DecodeLimits, check_instance, read_checked_dataset

log = logging.getLogger(__name__)

MAX_SIZE = 512  # the heatmap's longest side (cxr_model.heatmaps.render_overlay_png)
_CACHE_SIZE = 64


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


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    out = str(value).strip().rstrip("\x00").strip()
    return out or None


def _person_name(ds: Dataset) -> str | None:
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


def has_burned_in_annotation(ds: Dataset) -> bool:
    """The worker's rule (``cxr_model.heatmaps.has_burned_in_annotation``)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def patient_context(storage_uri: str, limits: DecodeLimits | None = None) -> PatientContext:
    """The patient context from one stored instance's header (bounded read). Raises a
    ``CxrTriageError`` when the file is missing or unreadable (the message has no values)."""
    header = check_instance(read_instance(storage_uri), limits or DecodeLimits()).dataset
    age = derive_age(header)
    return PatientContext(
        name=_person_name(header),
        patient_id=_text(header, "PatientID"),
        age=format_age(age.years) if age.known else None,
        sex=_text(header, "PatientSex"),
        study_date=_date(_text(header, "StudyDate")),
        body_part=_text(header, "BodyPartExamined"),
        view=_text(header, "ViewPosition"),
        burned_in_annotation=has_burned_in_annotation(header),
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


class RadiographCache:
    """Rendered radiographs by storage URI, least recently used dropped first."""

    def __init__(self, size: int = _CACHE_SIZE, limits: DecodeLimits | None = None) -> None:
        self._size = size
        self._limits = limits or DecodeLimits()
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, storage_uri: str) -> bytes:
        """The radiograph's PNG; raises ``Withheld`` or another ``CxrTriageError``."""
        with self._lock:
            if storage_uri in self._items:
                self._items.move_to_end(storage_uri)
                return self._items[storage_uri]
        ds = read_checked_dataset(read_instance(storage_uri), self._limits)
        if has_burned_in_annotation(ds):
            raise Withheld("text is burned into this image's pixels; view it in the PACS")
        png = render_png(decode_dataset(ds).pixels)
        with self._lock:
            self._items[storage_uri] = png
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return png
