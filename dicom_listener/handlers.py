"""C-ECHO and C-STORE handlers: the DICOM adapter of :mod:`cxr_ingest`.

They never raise across the association: every failure is caught, logged with UIDs only
(never names or patient IDs) and answered with a status from :mod:`.statuses`.

C-STORE: the received file (pynetdicom writes it to the storage's staging folder, and
:mod:`.boundary` hashes it as it is written) and the request's source (calling AE title,
peer address, Affected SOP Class and Instance UIDs) go to :func:`cxr_ingest.ingest`,
which holds every rule (limits, hash, same-UID comparison, durable place, row, enqueue
after commit). This module only maps its :class:`~cxr_ingest.Outcome` to a C-STORE
status: stored, duplicate and our own forwarded objects are Success; each
:class:`~cxr_ingest.RefusalCode` has its status in :data:`STATUS_FOR_REFUSAL`, answered
with an Error Comment (0000,0902): a short reason without patient data that the sender
can show.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from celery import Celery
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event
from sqlalchemy import Engine

from cxr_common.storage import Storage
from cxr_imaging.limits import DecodeLimits
from cxr_ingest import (
    STORED_SOP_CLASSES,
    Ingest,
    Outcome,
    Received,
    RefusalCode,
    Source,
    Transport,
    content_sha256,
    ingest,
)
from dicom_listener.boundary import peer_address, received_digest
from dicom_listener.loopback import LoopbackGuard
from dicom_listener.statuses import EchoStatus, StoreStatus

__all__ = [
    "ACCEPTED_SOP_CLASSES",
    "STATUS_FOR_REFUSAL",
    "StoreHandler",
    "content_sha256",
    "error_comment",
    "handle_echo",
    "status_dataset",
    "store_status",
]

logger = logging.getLogger(__name__)

#: SOP classes the listener stores (the ingest core's list): see
#: :data:`cxr_ingest.STORED_SOP_CLASSES`.
ACCEPTED_SOP_CLASSES: tuple[UID, ...] = tuple(UID(c) for c in STORED_SOP_CLASSES)

#: The C-STORE status answering each refusal (PS3.4 Annex B.2.3, PS3.7 Annex C).
STATUS_FOR_REFUSAL: dict[RefusalCode, StoreStatus] = {
    RefusalCode.SOP_CLASS_NOT_STORED: StoreStatus.SOP_CLASS_NOT_SUPPORTED,
    RefusalCode.SOP_CLASS_MISMATCH: StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    RefusalCode.SOP_INSTANCE_MISMATCH: StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    # (C-STORE announces no study; only a STOW-RS request to /studies/{study} does)
    RefusalCode.STUDY_INSTANCE_MISMATCH: StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    RefusalCode.MISSING_UID: StoreStatus.CANNOT_UNDERSTAND,
    RefusalCode.INVALID_UID: StoreStatus.CANNOT_UNDERSTAND,
    RefusalCode.UNDECODABLE: StoreStatus.UNDECODABLE_DATASET,
    RefusalCode.PIXEL_DATA_LENGTH: StoreStatus.PIXEL_DATA_LENGTH,
    RefusalCode.DECLARED_SIZE: StoreStatus.DECLARED_SIZE,
    RefusalCode.INFLATED_SIZE: StoreStatus.INFLATED_SIZE,
    RefusalCode.HEADER_SIZE: StoreStatus.HEADER_SIZE,
    RefusalCode.INPUT_REFUSED: StoreStatus.CANNOT_UNDERSTAND,
    RefusalCode.CONTENT_CONFLICT: StoreStatus.DUPLICATE_SOP_INSTANCE,
    RefusalCode.PATIENT_CONFLICT: StoreStatus.PATIENT_CONFLICT,
    RefusalCode.FOREIGN_RESULT_OBJECT: StoreStatus.FOREIGN_RESULT_OBJECT,
    RefusalCode.STORAGE_UNAVAILABLE: StoreStatus.OUT_OF_RESOURCES_STORAGE,
    RefusalCode.DATABASE_UNAVAILABLE: StoreStatus.OUT_OF_RESOURCES_DATABASE,
    RefusalCode.INTERNAL_ERROR: StoreStatus.PROCESSING_FAILURE,
}


def handle_echo(event: Event) -> int:
    """C-ECHO: always success while the listener is up (never raises)."""
    try:
        logger.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
        return int(EchoStatus.SUCCESS)
    except Exception:  # noqa: BLE001 - a handler must never raise across the association
        logger.error("C-ECHO handler failed")
        return int(EchoStatus.PROCESSING_FAILURE)


def error_comment(text: str) -> str:
    """``text`` as an Error Comment (0000,0902): LO, at most 64 ASCII characters, no
    backslash."""
    text = text.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    return text if len(text) <= 64 else text[:61] + "..."


def status_dataset(status: StoreStatus, comment: str | None = None) -> Dataset:
    """The C-STORE response status, with an Error Comment for a failure."""
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


def store_status(outcome: Outcome) -> StoreStatus:
    """The C-STORE status of an ingest outcome."""
    if outcome.refusal is None:
        return StoreStatus.SUCCESS
    return STATUS_FOR_REFUSAL[outcome.refusal]


def _source(event: Event) -> Source:
    request: Any = event.request
    requestor = event.assoc.requestor
    return Source(
        transport=Transport.DICOM,
        identity=str(requestor.ae_title),
        peer_address=peer_address(event.assoc),
        announced_sop_class_uid=str(request.AffectedSOPClassUID or ""),
        announced_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
    )


def _received(event: Event) -> Received:
    try:
        path = event.dataset_path  # STORE_RECV_CHUNKED_DATASET: already a file
    except AttributeError:
        path = None
    if path is None:
        return Received(data=event.encoded_dataset(include_meta=True))
    return Received(path=path, digest=received_digest(path))


class StoreHandler:
    """The EVT_C_STORE handler: one instance per listener, shared by its associations."""

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        celery_app: Celery,
        queue_name: str,
        accepted_sop_classes: tuple[str, ...] = ACCEPTED_SOP_CLASSES,
        limits: DecodeLimits | None = None,
        loopback: LoopbackGuard | None = None,
        urgent_ae_titles: Collection[str] = (),
        patient_key: bytes = b"",
    ) -> None:
        self.rules = Ingest(
            engine,
            storage,
            celery_app,
            queue_name,
            limits=limits or DecodeLimits(),
            uid_root=loopback.uid_root if loopback is not None else None,
            stored_sop_classes=frozenset(accepted_sop_classes),
            urgent_ae_titles=frozenset(urgent_ae_titles),
            patient_key=patient_key,
        )

    def __call__(self, event: Event) -> Dataset:
        """Handle one C-STORE request; returns the status (never raises)."""
        sop_instance = "?"
        try:
            request: Any = event.request
            sop_instance = str(request.AffectedSOPInstanceUID or "?")[:64]
            outcome = ingest(self.rules, _received(event), _source(event))
        except Exception as exc:  # noqa: BLE001 - never raise across the association
            logger.error(
                "C-STORE failed unexpectedly: sop_instance_uid=%s error=%s",
                sop_instance,
                type(exc).__name__,
            )
            return status_dataset(
                StoreStatus.PROCESSING_FAILURE, f"listener error ({type(exc).__name__})"
            )
        status = store_status(outcome)
        if outcome.refusal is RefusalCode.INTERNAL_ERROR:
            logger.error(
                "C-STORE failed unexpectedly: sop_instance_uid=%s error=%s",
                sop_instance,
                outcome.reason,
            )
        elif outcome.refusal is not None:
            logger.warning(
                "C-STORE refused: status=0x%04X sop_instance_uid=%s reason=%s",
                status,
                sop_instance,
                outcome.reason,
            )
        return status_dataset(status, outcome.comment if outcome.refusal else None)
