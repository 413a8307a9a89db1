"""Loop prevention for the listener: our own result objects forwarded back by a PACS are
acknowledged with Success and dropped. The rule lives in :mod:`cxr_ingest.own_objects`
(transport-neutral: the announced SOP Instance UID and the parsed header); this module
names the extra storage context the listener offers for it and the guard it configures.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxr_ingest import Source
from cxr_ingest.own_objects import OWN_OBJECT_SOP_CLASSES, is_own_object

#: Storage SOP classes accepted only so that our own forwarded objects are acknowledged.
LOOPBACK_SOP_CLASSES: tuple[UID, ...] = tuple(UID(c) for c in OWN_OBJECT_SOP_CLASSES)


class LoopbackGuard:
    """Answers whether a received instance is one of our own result objects."""

    def __init__(self, uid_root: str) -> None:
        self.uid_root = uid_root

    def is_ours(self, source: Source, header: Dataset | None = None) -> bool:
        """True for one of our objects (see :func:`cxr_ingest.own_objects.is_own_object`)."""
        return is_own_object(self.uid_root, source, header)
