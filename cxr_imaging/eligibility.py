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

Reasons are fixed text plus coded values only (Modality, BodyPartExamined,
ViewPosition, a ViewCodeSequence code, Rows/Columns), Modality and BodyPartExamined
shown only when they are a DICOM defined term, else as "(non-standard value)" (a CS value
may still hold a name). Free text (SeriesDescription, ProtocolName, a code's
meaning) is read but never copied into a reason: sites type names into it, and reasons go
to logs and the worklist (issue 12, defect 10).
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

__all__ = [
    "KNOWN_MODALITIES",
    "KNOWN_VIEW_POSITIONS",
    "MIN_SIZE_PX",
    "NON_STANDARD",
    "Eligibility",
    "check_eligibility",
    "coded",
    "is_chest_radiograph",
]

#: Smallest Rows/Columns accepted.
MIN_SIZE_PX = 64

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
FRONTAL_VIEWS = frozenset({"PA", "AP", "APS", "PAS"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
_LATERAL_WORD = re.compile(r"\bLAT(ERAL)?\b", re.IGNORECASE)
_CODE_VALUE = re.compile(r"^[A-Za-z0-9.:_-]{1,16}$")
NON_STANDARD = "(non-standard value)"
#: Modality defined terms (PS3.3 C.7.3.1.1.1), retired ones included: shown in reasons.
KNOWN_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT "
    "IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR "
    "PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV "
    "SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC "
    "AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF".split()
)
#: Body Part Examined defined terms (PS3.16 Annex L), the common ones: shown in reasons.
KNOWN_BODY_PARTS = frozenset(
    "ABDOMEN ABDOMENPELVIS ANKLE ARM BREAST CALF CHEST CHESTABDOMEN CHESTABDPELVIS CLAVICLE "
    "COCCYX CSPINE EAR ELBOW EXTREMITY FACE FINGER FOOT FOREARM HAND HEAD HEADNECK HEART HIP "
    "HUMERUS JAW KNEE LEG LSPINE LUNG LUNGS NECK PELVIS RIB SACRUM SCAPULA SHOULDER SKULL "
    "SPINE SSPINE THIGH THORAX THUMB TOE TSPINE WHOLEBODY WRIST ZYGOMA".split()
)
#: View Position defined terms (PS3.3 C.8.11.7, C.8.19.6) and the frontal and lateral
#: values real modalities send: shown in reasons.
KNOWN_VIEW_POSITIONS = (
    frozenset("AP PA LL RL RLD LLD RLO LLO".split()) | FRONTAL_VIEWS | LATERAL_VIEWS
)
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


def coded(value: str, known: frozenset[str]) -> str:
    """``value`` when it is a known defined term, else a fixed stand-in: never free text
    (a CS value may still hold a name)."""
    return value if value in known else NON_STANDARD


_coded = coded


def _code_value(value: str) -> str:
    """A ViewCodeSequence code value or scheme when it has the form of one."""
    return value if _CODE_VALUE.match(value) else NON_STANDARD


def _is_secondary_capture(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).strip() in SECONDARY_CAPTURE_SOP_CLASSES


def _modality_reason(ds: Dataset, modality: str, body_part: str) -> str | None:
    if modality in RADIOGRAPH_MODALITIES:
        return None
    if modality in {"", "OT"} and _is_secondary_capture(ds) and body_part in CHEST_BODY_PARTS:
        return None
    shown = _coded(modality, KNOWN_MODALITIES) if modality else "(absent)"
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
            scheme = _code_value(str(item.get("CodingSchemeDesignator", "")).strip())
            value = _code_value(str(item.get("CodeValue", "")).strip())
            return (
                f"lateral view (ViewCodeSequence code {scheme} {value}) is not scored; "
                "frontal PA/AP only"
            )
    if view in FRONTAL_VIEWS:
        return None
    for keyword in _DESCRIPTOR_KEYWORDS:
        text = _text(ds, keyword)
        if text and _LATERAL_WORD.search(text):
            # The keyword, never its text: free text may hold a name.
            return (
                f"lateral view ({keyword} names a lateral view) is not scored; frontal PA/AP only"
            )
    return None


def is_chest_radiograph(ds: Dataset) -> bool:
    """True when rules 1 and 2 pass (a radiograph of the chest by modality and body part),
    whatever the view or size: such a study gets a not-analysed result when nothing in it
    could be scored; anything else (a CT, an abdomen film) is none of our business."""
    modality = _text(ds, "Modality")
    body_part = _text(ds, "BodyPartExamined")
    if _modality_reason(ds, modality, body_part) is not None:
        return False
    return not body_part or body_part in CHEST_BODY_PARTS


def check_eligibility(ds: Dataset) -> Eligibility:
    """Decide whether ``ds`` is a frontal chest radiograph (rules in the module docstring)."""
    modality = _text(ds, "Modality")
    body_part = _text(ds, "BodyPartExamined")

    reason = _modality_reason(ds, modality, body_part)
    if reason is None and body_part and body_part not in CHEST_BODY_PARTS:
        reason = f"body part {_coded(body_part, KNOWN_BODY_PARTS)} is not chest"
    if reason is None:
        reason = _view_reason(ds)
    if reason is None:
        rows, columns = ds.get("Rows"), ds.get("Columns")
        if rows is not None and columns is not None and min(int(rows), int(columns)) < MIN_SIZE_PX:
            reason = f"image {int(columns)}x{int(rows)} is too small (< {MIN_SIZE_PX} px)"
    return Eligibility(eligible=reason is None, reason=reason)
