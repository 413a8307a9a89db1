"""Loop prevention: recognise our own result objects when a PACS forwards them back.

A PACS that forwards everything it receives to cxr-triage would send our Secondary
Capture and SR straight back. Such an instance is acknowledged as a success (so the PACS
does not retry it forever) and is then dropped: never stored, recorded, scored, or sent
again. It is recognised by :func:`cxr_results.uids.is_our_dataset`: its SOP Instance or
Series Instance UID lies under our UID root (``CXR_UID_ROOT``), or it carries our
Manufacturer plus SeriesDescription marker (a PACS that assigns new UIDs on import).

The announced SOP Instance UID is checked first, without reading the file; the header
(the one parse of ingest) next. The SR classes (Comprehensive 3D SR, and Comprehensive SR
of results filed before TID 1500) and the Segmentation class (the heatmap as data) are
received for this reason alone (:data:`OWN_OBJECT_SOP_CLASSES`): one that is not ours is
refused as a class we do not store.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, SegmentationStorage

from cxr_ingest.outcome import Source
from cxr_results.uids import is_our_dataset, is_our_uid

#: SOP classes received only so that our own forwarded objects are acknowledged.
OWN_OBJECT_SOP_CLASSES: tuple[str, ...] = (
    Comprehensive3DSRStorage,
    SegmentationStorage,
    ComprehensiveSRStorage,
)


def is_own_object(uid_root: str, source: Source, header: Dataset | None = None) -> bool:
    """True for one of our objects: by the announced SOP Instance UID, or (given) by the
    parsed ``header``. An unreadable header is not ours."""
    announced = (source.announced_sop_instance_uid or "")[:64]
    if announced and is_our_uid(announced, uid_root):
        return True
    if header is None:
        return False
    try:
        return is_our_dataset(header, uid_root)
    except Exception:  # noqa: BLE001 - pydicom raises many types on bad input
        return False
