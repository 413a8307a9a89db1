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
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from cxr_common.errors import CxrTriageError
from cxr_common.storage import read_instance
from cxr_db.instances.reads import stored_patient_context
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
