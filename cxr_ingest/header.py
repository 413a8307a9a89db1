"""The one read of a received file's header: limits, identity, the row and the patient
context, from a single bounded parse.

:func:`read_received` runs :func:`cxr_imaging.limits.check_instance` once (bounded: a
Deflated data set is inflated in pieces, the header kept, the rest counted) and takes
from its header everything later steps need: the UIDs, the columns of the instance row,
whether it is one of our own result objects, and the patient context the study page
shows (stored on the row, so the web app never reads the file for it). Pixel Data is
never read here: the worker decodes it.

``parse_count`` counts these reads (tests check that a received file is parsed once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cxr_common.storage import sanitise_uid
from cxr_imaging.age import derive_age
from cxr_imaging.limits import DecodeLimits, Header, check_instance

_parses_lock = threading.Lock()
_parsed = 0


def parse_count() -> int:
    """How many received headers this process has parsed."""
    with _parses_lock:
        return _parsed


def _count_parse() -> None:
    global _parsed
    with _parses_lock:
        _parsed += 1


#: The patient context kept on the instance row (migration 0008): DICOM keywords as keys,
#: cleaned text values, plus ``age_years`` derived at ingest (PatientAge, or the birth and
#: study dates; the birth date itself is not kept). Shown to signed-in radiologists on the
#: study page; never logged, never in an export.
PATIENT_CONTEXT_KEYWORDS: tuple[tuple[str, int], ...] = (
    ("PatientName", 324),
    ("PatientID", 64),
    ("PatientSex", 16),
    ("StudyDate", 8),
    ("BodyPartExamined", 64),
    ("ViewPosition", 16),
    ("BurnedInAnnotation", 3),
)


def clean_text(value: Any, max_len: int) -> str | None:
    """A header value fit for a database column: printable characters only (Postgres
    refuses NUL in text; control characters have no place in a code), at most
    ``max_len``."""
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:max_len] or None


def header_text(ds: Dataset, keyword: str, max_len: int) -> str | None:
    return clean_text(ds.get(keyword), max_len)


def optional_uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        return sanitise_uid(str(value))
    except ValueError:
        return None


def patient_context(ds: Dataset) -> dict[str, Any]:
    """The patient context of one header (see :data:`PATIENT_CONTEXT_KEYWORDS`); values
    that cannot be read are left out."""
    context: dict[str, Any] = {}
    for keyword, max_len in PATIENT_CONTEXT_KEYWORDS:
        try:
            value = header_text(ds, keyword, max_len)
        except Exception:  # noqa: BLE001 - a corrupt raw element: leave it out
            value = None
        if value is not None:
            context[keyword] = value
    age = derive_age(ds)
    context["age_years"] = age.years if age.known else None
    return context


@dataclass(frozen=True)
class ReceivedHeader:
    """What the one bounded parse of a received file found (everything before Pixel
    Data, with ``file_meta``)."""

    dataset: Dataset
    transfer_syntax_uid: str | None
    #: True when ``exempt`` claimed the header: the limit checks did not run.
    exempt: bool


def read_received(
    path: Path, limits: DecodeLimits, exempt: Callable[[Dataset], bool] | None = None
) -> ReceivedHeader:
    """Parse ``path``'s header once and apply every pre-decode limit check, unless
    ``exempt`` (called with the header before any check) returns True. Raises what
    :func:`check_instance` raises (``InputRefusedError``, ``ImagingError``)."""
    claimed: list[bool] = []

    def claim(ds: Dataset) -> bool:
        result = exempt is not None and exempt(ds)
        claimed.append(result)
        return result

    _count_parse()
    header: Header = check_instance(path, limits, exempt=claim)
    ds = header.dataset
    return ReceivedHeader(ds, header.transfer_syntax_uid, bool(claimed and claimed[0]))
