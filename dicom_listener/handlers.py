"""C-ECHO and C-STORE handlers.

They never raise across the association: every failure is caught, logged with UIDs only
(never names or patient IDs) and answered with a status from :mod:`.statuses`.

C-STORE, in order: stage the received file (with its File Meta) in the storage's staging
folder → validate the header → move it into place atomically (fsync + rename) → record it
in Postgres → answer success; after the commit, enqueue the scoring job and mark the
instance queued. If enqueueing fails the answer is still success: the reconciler
re-enqueues committed instances that were never enqueued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom.events import Event
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cxr_common.errors import StorageError
from cxr_common.storage import Storage, instance_key, sanitise_uid
from cxr_db import repository as repo
from cxr_queue import ScoreJob
from dicom_listener.enqueue import enqueue_instance
from dicom_listener.loopback import LoopbackGuard
from dicom_listener.statuses import EchoStatus, StoreStatus

logger = logging.getLogger(__name__)

#: SOP classes the listener stores. CR, DX and Secondary Capture carry chest films (real
#: ones often arrive as SC). CT is accepted on purpose so that a study routed here by
#: mistake becomes a visible "not eligible" row on the worklist instead of a silent
#: association failure at the modality; the worker's eligibility rules never score it.
ACCEPTED_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    CTImageStorage,
)


def handle_echo(event: Event) -> int:
    """C-ECHO: always success while the listener is up (never raises)."""
    try:
        logger.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
        return int(EchoStatus.SUCCESS)
    except Exception:  # noqa: BLE001 - a handler must never raise across the association
        logger.error("C-ECHO handler failed")
        return int(EchoStatus.PROCESSING_FAILURE)


class _Refused(Exception):
    """Internal: stop handling this C-STORE and answer ``status``."""

    def __init__(self, status: StoreStatus, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _text(ds: Dataset, keyword: str, max_len: int) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text[:max_len] or None


def _optional_uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        return sanitise_uid(str(value))
    except ValueError:
        return None


def _read_instance_record(
    path: Path,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    calling_ae_title: str | None,
    storage: Storage,
) -> repo.InstanceRecord:
    """Parse and validate the staged file's header into the row the listener records
    (pixel data is left to the worker). The instance's URI is where ``storage`` keeps it
    under :func:`instance_key`; ``_Refused`` says why a header cannot be stored."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        # Force every element we need to be decoded now, inside this try.
        raw_class = ds.get("SOPClassUID")
        raw_instance = ds.get("SOPInstanceUID")
        raw_study = ds.get("StudyInstanceUID")
        meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        accession = _text(ds, "AccessionNumber", 64)
        modality = _text(ds, "Modality", 16)
        body_part = _text(ds, "BodyPartExamined", 64)
        view = _text(ds, "ViewPosition", 16)
        series = _optional_uid(ds, "SeriesInstanceUID")
    except Exception as exc:  # pydicom raises many types on bad input
        raise _Refused(
            StoreStatus.UNDECODABLE_DATASET, f"data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    if raw_class is None or raw_instance is None or raw_study is None:
        raise _Refused(
            StoreStatus.CANNOT_UNDERSTAND,
            "SOP Class, SOP Instance or Study Instance UID missing",
        )
    try:
        sop_class = sanitise_uid(str(raw_class))
        sop_instance = sanitise_uid(str(raw_instance))
        study = sanitise_uid(str(raw_study))
    except ValueError as exc:
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, "a required UID is not valid") from exc
    if sop_class != affected_sop_class_uid:
        raise _Refused(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"data set SOP Class {sop_class} differs from the request's {affected_sop_class_uid}",
        )
    if sop_instance != affected_sop_instance_uid:
        raise _Refused(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "data set SOP Instance UID differs from the request's",
        )
    return repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        series_instance_uid=series,
        transfer_syntax_uid=str(meta_ts) if meta_ts else None,
        accession_number=accession,
        modality=modality,
        body_part=body_part,
        view_position=view,
        calling_ae_title=calling_ae_title,
        storage_uri=storage.uri(instance_key(study, sop_instance)),
        size_bytes=path.stat().st_size,
    )


class StoreHandler:
    """The EVT_C_STORE handler: one instance per listener, shared by its associations."""

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        celery_app: Celery,
        queue_name: str,
        accepted_sop_classes: tuple[str, ...] = ACCEPTED_SOP_CLASSES,
        loopback: LoopbackGuard | None = None,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.celery_app = celery_app
        self.queue_name = queue_name
        self.accepted_sop_classes = frozenset(accepted_sop_classes)
        self.loopback = loopback

    def __call__(self, event: Event) -> int:
        """Handle one C-STORE request; returns the status (never raises)."""
        sop_instance = "?"
        try:
            request: Any = event.request
            sop_instance = str(request.AffectedSOPInstanceUID or "?")[:64]
            return int(self._store(event))
        except _Refused as refused:
            logger.warning(
                "C-STORE refused: status=0x%04X sop_instance_uid=%s reason=%s",
                refused.status,
                sop_instance,
                refused.why,
            )
            return int(refused.status)
        except Exception as exc:  # noqa: BLE001 - never raise across the association
            logger.error(
                "C-STORE failed unexpectedly: sop_instance_uid=%s error=%s",
                sop_instance,
                type(exc).__name__,
            )
            return int(StoreStatus.PROCESSING_FAILURE)

    def _stage(self, event: Event) -> Path:
        """Put the received data set (with File Meta) in a temp file in the staging dir."""
        try:
            staging = self.storage.staging_dir()
            fd, name = tempfile.mkstemp(dir=staging, suffix=".part")
        except (OSError, StorageError) as exc:
            raise _Refused(
                StoreStatus.OUT_OF_RESOURCES_STORAGE, "storage staging folder is not writable"
            ) from exc
        staged = Path(name)
        try:
            received: Path | None
            try:
                received = event.dataset_path  # STORE_RECV_CHUNKED_DATASET: already a file
            except AttributeError:
                received = None
            if received is not None:
                os.close(fd)
                shutil.move(received, staged)
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise _Refused(
                StoreStatus.OUT_OF_RESOURCES_STORAGE, f"cannot stage instance: {exc.strerror}"
            ) from exc
        return staged

    def _store(self, event: Event) -> StoreStatus:
        if self.loopback is not None and self.loopback.is_ours(event):
            return StoreStatus.SUCCESS  # our own result object, forwarded back: dropped
        request: Any = event.request
        affected_class = str(request.AffectedSOPClassUID or "")
        affected_instance = str(request.AffectedSOPInstanceUID or "")
        calling_ae = str(event.assoc.requestor.ae_title).strip()[:16] or None
        if affected_class not in self.accepted_sop_classes:
            raise _Refused(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"SOP class {affected_class} not stored"
            )
        staged = self._stage(event)
        try:
            record = _read_instance_record(
                staged, affected_class, affected_instance, calling_ae, self.storage
            )
            key = instance_key(record.study_instance_uid, record.sop_instance_uid)
            existed_before = self.storage.exists(key)
            try:
                self.storage.put_file(key, staged)
            except (StorageError, OSError) as exc:
                raise _Refused(
                    StoreStatus.OUT_OF_RESOURCES_STORAGE, "instance could not be written"
                ) from exc
            try:
                result = repo.record_instance(self.engine, record)
            except SQLAlchemyError as exc:
                if not existed_before:
                    # Not acknowledged, not recorded: leave no orphan behind.
                    with contextlib.suppress(StorageError):
                        self.storage.delete(key)
                raise _Refused(
                    StoreStatus.OUT_OF_RESOURCES_DATABASE,
                    f"instance could not be recorded ({type(exc).__name__})",
                ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        if result.created:
            self._enqueue(result.instance_id, record)
            logger.info(
                "stored sop_instance_uid=%s study_instance_uid=%s sop_class_uid=%s "
                "instance_id=%d calling_ae_title=%s",
                record.sop_instance_uid,
                record.study_instance_uid,
                record.sop_class_uid,
                result.instance_id,
                calling_ae,
            )
        else:
            logger.info(
                "resend of known sop_instance_uid=%s (instance_id=%d, status=%s): no new job",
                record.sop_instance_uid,
                result.instance_id,
                result.status,
            )
        return StoreStatus.SUCCESS

    def _enqueue(self, instance_id: int, record: repo.InstanceRecord) -> None:
        """Enqueue after commit; a failure is left to the reconciler."""
        try:
            job = ScoreJob(
                instance_id=instance_id,
                sop_instance_uid=record.sop_instance_uid,
                storage_uri=record.storage_uri,
            )
            enqueue_instance(self.engine, self.celery_app, self.queue_name, job)
        except Exception as exc:  # noqa: BLE001 - broker errors come in many types
            logger.warning(
                "enqueue failed for sop_instance_uid=%s instance_id=%d (%s): "
                "the reconciler will re-enqueue it",
                record.sop_instance_uid,
                instance_id,
                type(exc).__name__,
            )
