"""Is this DICOM instance a frontal chest radiograph we may score?

Only metadata is read (a dataset read with ``stop_before_pixels=True`` is enough).
Rules, in order; the first that fails gives the reason shown on the worklist:

1. Modality CR or DX (what the model was trained on). Real chest films also arrive as
   Secondary Capture with Modality CR/DX, which passes here. Modality OT or absent
   passes only with a Secondary Capture SOP class *and* BodyPartExamined CHEST.
   CT, MR, NM, US, PT, MG, XA... are refused.
2. BodyPartExamined CHEST, THORAX or LUNG, or absent (many chest films omit it).
   An explicit other body part (EXTREMITY, ABDOMEN, SKULL...) is refused.
3. Not a lateral view: ViewPosition LL/RL/LATERAL, a ViewCodeSequence meaning
   "lateral", or, when ViewPosition is not a frontal one, a word LAT/LATERAL in
   SeriesDescription, ProtocolName or AcquisitionDeviceProcessingDescription.
4. At least 64 px in each direction (when Rows/Columns are present).

Reasons name header values only, never patient data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

__all__ = ["MIN_SIZE_PX", "Eligibility", "check_eligibility"]

#: Smallest Rows/Columns accepted.
MIN_SIZE_PX = 64

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
FRONTAL_VIEWS = frozenset({"PA", "AP", "APS", "PAS"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
_LATERAL_WORD = re.compile(r"\bLAT(ERAL)?\b", re.IGNORECASE)
_DESCRIPTOR_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
)
#: Secondary Capture image storage SOP classes (single- and multi-frame).
SECONDARY_CAPTURE_SOP_CLASSES: frozenset[UID] = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)


@dataclass(frozen=True)
class Eligibility:
    """Outcome of :func:`check_eligibility`; ``reason`` is ``None`` when eligible."""

    eligible: bool
    reason: str | None = None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip().upper()


def _is_secondary_capture(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).strip() in SECONDARY_CAPTURE_SOP_CLASSES


def _modality_reason(ds: Dataset, modality: str, body_part: str) -> str | None:
    if modality in RADIOGRAPH_MODALITIES:
        return None
    if modality in {"", "OT"} and _is_secondary_capture(ds) and body_part in CHEST_BODY_PARTS:
        return None
    shown = modality or "(absent)"
    if modality in {"", "OT"}:
        return (
            f"modality {shown} is not a chest radiograph (CR/DX), "
            "and it is not a Secondary Capture with body part CHEST"
        )
    return f"modality {shown} is not a chest radiograph (CR/DX)"


def _view_reason(ds: Dataset) -> str | None:
    view = _text(ds, "ViewPosition")
    if view in LATERAL_VIEWS:
        return f"lateral view (ViewPosition {view}) is not scored; frontal PA/AP only"
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", ""))
        if "lateral" in meaning.lower() and "decubitus" not in meaning.lower():
            return f"lateral view (ViewCodeSequence '{meaning}') is not scored; frontal PA/AP only"
    if view in FRONTAL_VIEWS:
        return None
    for keyword in _DESCRIPTOR_KEYWORDS:
        text = _text(ds, keyword)
        if text and _LATERAL_WORD.search(text):
            return f"lateral view ({keyword} '{text}') is not scored; frontal PA/AP only"
    return None


def check_eligibility(ds: Dataset) -> Eligibility:
    """Decide whether ``ds`` is a frontal chest radiograph (rules in the module docstring)."""
    modality = _text(ds, "Modality")
    body_part = _text(ds, "BodyPartExamined")

    reason = _modality_reason(ds, modality, body_part)
    if reason is None and body_part and body_part not in CHEST_BODY_PARTS:
        reason = f"body part {body_part} is not chest"
    if reason is None:
        reason = _view_reason(ds)
    if reason is None:
        rows, columns = ds.get("Rows"), ds.get("Columns")
        if rows is not None and columns is not None and min(int(rows), int(columns)) < MIN_SIZE_PX:
            reason = f"image {int(columns)}x{int(rows)} is too small (< {MIN_SIZE_PX} px)"
    return Eligibility(eligible=reason is None, reason=reason)
