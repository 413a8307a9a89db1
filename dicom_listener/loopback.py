"""Loop prevention: recognise our own result objects when a PACS forwards them back.

A PACS that forwards everything it receives to cxr-triage would send our Secondary Capture
and SR straight back. Such an instance is acknowledged with Success (so the PACS does not
retry it forever) and is then dropped: never stored, recorded, scored, or sent again.
It is recognised by :func:`cxr_results.is_our_dataset`: its SOP Instance or Series
Instance UID lies under our UID root (``CXR_UID_ROOT``), or it carries our Manufacturer
plus SeriesDescription marker (a PACS that assigns new UIDs on import). The log names the
SOP Instance UID only.

The listener also accepts the Comprehensive SR storage context for this reason alone
(:data:`LOOPBACK_SOP_CLASSES`): a forwarded SR that is not ours is refused with
"SOP class not supported", as any other class we do not store.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ComprehensiveSRStorage
from pynetdicom.events import Event

from cxr_imaging.limits import DecodeLimits, read_header
from cxr_results import is_our_dataset, is_our_uid

logger = logging.getLogger(__name__)

#: Storage SOP classes accepted only so that our own forwarded objects are acknowledged.
LOOPBACK_SOP_CLASSES: tuple[UID, ...] = (ComprehensiveSRStorage,)
#: The header is read within the default decode limits (the handler applies the
#: configured ones right after).
_HEADER_LIMITS = DecodeLimits()


class LoopbackGuard:
    """Answers whether a C-STORE request carries one of our own result objects."""

    def __init__(self, uid_root: str) -> None:
        self.uid_root = uid_root

    def _header(self, event: Event) -> Dataset:
        try:
            path = event.dataset_path  # STORE_RECV_CHUNKED_DATASET: already a file
        except AttributeError:
            return event.dataset
        # Bounded (issue 12, defect 5): dcmread(stop_before_pixels=True) inflates a
        # Deflated data set whole, so a deflate bomb would reach memory before the
        # handler's own limits check. read_header keeps the header only.
        return read_header(path, _HEADER_LIMITS).dataset

    def is_ours(self, event: Event) -> bool:
        """True for one of our objects (then it is logged, by UID only). An unreadable
        data set is not ours: the store path answers for it as usual."""
        request: Any = event.request
        sop_instance = str(request.AffectedSOPInstanceUID or "")[:64]
        ours = is_our_uid(sop_instance, self.uid_root)
        if not ours:
            try:
                ours = is_our_dataset(self._header(event), self.uid_root)
            except Exception:  # noqa: BLE001 - pydicom raises many types on bad input
                return False
        if ours:
            logger.info(
                "our own result object came back (sop_instance_uid=%s): acknowledged, "
                "not recorded, not scored, not sent again",
                sop_instance,
            )
        return ours
