"""Loop prevention: recognise our own result objects when a PACS forwards them back.

A PACS that forwards everything it receives to cxr-triage would send our Secondary
Capture and SR straight back. Such an instance is acknowledged as a success (so the PACS
does not retry it forever) and is then dropped: never stored, recorded, scored, or sent
again. It is recognised by our UID root alone (``CXR_UID_ROOT``,
:func:`cxr_results.uids.is_our_dataset`): its SOP class is one we create
(:data:`cxr_results.uids.OUR_SOP_CLASSES`) and its SOP Instance (or Series Instance) UID
lies under our root.

The announced SOP Class and Instance UIDs are checked first, without reading the file;
the header (the one parse of ingest) next. What merely *looks* like ours (our
Manufacturer plus SeriesDescription marker, any UID) is never acknowledged silently: it is
refused with a status (:func:`looks_like_ours`, ``RefusalCode.FOREIGN_RESULT_OBJECT``),
so neither a spoofed image nor a PACS that re-assigns our UIDs can make an instance
vanish or start a loop. The SR classes (Comprehensive 3D SR, and Comprehensive SR of results filed
before TID 1500), the Segmentation class (the heatmap as data) and the other classes we
create but do not store is received for loop prevention alone (:data:`OWN_OBJECT_SOP_CLASSES`): an
SR that is not ours is refused as a class we do not store.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ParametricMapStorage,
    SegmentationStorage,
)

from cxr_ingest.outcome import Source
from cxr_results.uids import OUR_SOP_CLASSES, carries_our_marker, is_our_dataset, is_our_uid

#: SOP classes received only so that our own forwarded objects are acknowledged.
OWN_OBJECT_SOP_CLASSES: tuple[str, ...] = (
    Comprehensive3DSRStorage,
    SegmentationStorage,
    ComprehensiveSRStorage,
    ParametricMapStorage,
)


def is_own_object(uid_root: str, source: Source, header: Dataset | None = None) -> bool:
    """True for one of our objects: by the announced SOP Class and Instance UIDs, or
    (given) by the parsed ``header`` (which must then agree with what was announced). An
    unreadable header is not ours."""
    announced = (source.announced_sop_instance_uid or "")[:64]
    announced_class = source.announced_sop_class_uid
    if announced_class is not None and announced_class not in OUR_SOP_CLASSES:
        return False
    if header is None:
        return bool(announced) and announced_class is not None and is_our_uid(announced, uid_root)
    try:
        ours = is_our_dataset(header, uid_root)
        if ours and announced_class is not None:
            ours = str(header.get("SOPClassUID", "")).strip() == announced_class
        return ours
    except Exception:  # noqa: BLE001 - pydicom raises many types on bad input
        return False


def looks_like_ours(header: Dataset) -> bool:
    """True when ``header`` carries our Manufacturer + SeriesDescription marker (and is not
    ours by :func:`is_own_object`): refused, never acknowledged silently."""
    try:
        return carries_our_marker(header)
    except Exception:  # noqa: BLE001 - pydicom raises many types on bad input
        return False
