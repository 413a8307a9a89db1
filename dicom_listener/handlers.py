"""C-ECHO and C-STORE handlers.

They never raise across the association: every failure is caught, logged with UIDs only
(never names or patient IDs) and answered with a status from :mod:`.statuses`.

C-STORE, in order: stage the received file (with its File Meta) in the storage's staging
folder → check it against the decode limits with bounded memory
(:func:`cxr_imaging.limits.check_instance`: deflate bombs, absurd or over-limit
dimensions, missing/empty/truncated Pixel Data are refused here, before anything is
stored) → hash its content → under a lock on the SOP Instance UID, either move it into
place atomically (fsync + rename) and record it in Postgres (a new UID), or compare it
with what is recorded (a resend: identical content is success without a second job;
different content is refused with 0x0111 and leaves the stored file, row and prediction
untouched, plus an ``instance_conflicts`` row) → answer; after the commit, enqueue the
scoring job and mark the instance queued. If enqueueing fails the answer is still
success: the reconciler re-enqueues committed instances that were never enqueued.

Failures answer a status ``Dataset`` with an Error Comment (0000,0902): a short reason
without patient data that the sender can show. Nothing is left in the staging folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

from celery import Celery
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

from cxr_common.errors import CxrTriageError, StorageError
from cxr_common.storage import Storage, instance_key, read_instance, sanitise_uid
from cxr_db.conflicts import store as conflicts
from cxr_db.instances import writes as repo
from cxr_imaging.errors import ImagingError
from cxr_imaging.limits import DecodeLimits, InputRefusedError, check_instance
from cxr_queue import ScoreJob, choose_lane, header_asks_urgent
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
    """Internal: stop handling this C-STORE and answer ``status`` with Error Comment
    ``comment`` (default: ``why``; both without patient data)."""

    def __init__(self, status: StoreStatus, why: str, comment: str | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.comment = comment or why


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


#: The refusal statuses of cxr_imaging.limits, as StoreStatus members.
_LIMIT_STATUSES = {int(s): s for s in StoreStatus}

_CHUNK = 1 << 20


def content_sha256(source: Path | BinaryIO, transfer_syntax_uid: str | None) -> str:
    """sha256 of what a sender sent: the transfer syntax UID and the data set bytes after
    the File Meta (which the receiving side writes itself). Two sends of one instance
    hash alike; any changed element, pixel or transfer syntax hashes differently."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return content_sha256(handle, transfer_syntax_uid)
    digest = hashlib.sha256((transfer_syntax_uid or "").encode("ascii", "replace") + b"\0")
    start = 0
    head = source.read(144)
    # Preamble, DICM, then (0002,0000) UL 4 <group length> in explicit VR LE.
    if len(head) == 144 and head[128:140] == b"DICM\x02\x00\x00\x00UL\x04\x00":
        start = 144 + struct.unpack("<L", head[140:144])[0]
    source.seek(start)
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _text(ds: Dataset, keyword: str, max_len: int) -> str | None:
    """A header value fit for a database column: printable characters only (Postgres
    refuses NUL in text; control characters have no place in a code), at most
    ``max_len``."""
    value = ds.get(keyword)
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
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
    limits: DecodeLimits,
    urgent_ae_titles: Collection[str] = (),
) -> repo.InstanceRecord:
    """Check the staged file against ``limits`` and parse its header into the row the
    listener records (pixel data is left to the worker). The instance's URI is where
    ``storage`` keeps it under :func:`instance_key`; ``_Refused`` says why it cannot be
    stored."""
    try:
        header = check_instance(path, limits)
    except InputRefusedError as exc:
        status = _LIMIT_STATUSES.get(exc.store_status, StoreStatus.CANNOT_UNDERSTAND)
        raise _Refused(status, exc.reason, exc.error_comment) from exc
    except (ImagingError, MemoryError) as exc:
        raise _Refused(
            StoreStatus.UNDECODABLE_DATASET,
            f"data set cannot be decoded ({type(exc).__name__})",
            "data set cannot be decoded: resend",
        ) from exc
    except Exception as exc:
        raise _Refused(
            StoreStatus.UNDECODABLE_DATASET,
            f"data set cannot be decoded ({type(exc).__name__})",
            "data set cannot be decoded: resend",
        ) from exc
    try:
        ds = header.dataset
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
        header_urgent = header_asks_urgent(ds)
    except Exception as exc:  # pydicom raises many types on bad input
        raise _Refused(
            StoreStatus.UNDECODABLE_DATASET,
            f"data set cannot be decoded ({type(exc).__name__})",
            "data set cannot be decoded: resend",
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
            "SOP Class UID differs from the C-STORE request's",
        )
    if sop_instance != affected_sop_instance_uid:
        raise _Refused(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "data set SOP Instance UID differs from the request's",
            "SOP Instance UID differs from the C-STORE request's",
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
        content_sha256=content_sha256(path, str(meta_ts) if meta_ts else None),
        lane=choose_lane(calling_ae_title, header_urgent, urgent_ae_titles),
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
        limits: DecodeLimits | None = None,
        loopback: LoopbackGuard | None = None,
        urgent_ae_titles: Collection[str] = (),
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.celery_app = celery_app
        self.queue_name = queue_name
        self.accepted_sop_classes = frozenset(accepted_sop_classes)
        self.limits = limits or DecodeLimits()
        self.loopback = loopback
        self.urgent_ae_titles = frozenset(urgent_ae_titles)

    def __call__(self, event: Event) -> Dataset:
        """Handle one C-STORE request; returns the status (never raises)."""
        sop_instance = "?"
        try:
            request: Any = event.request
            sop_instance = str(request.AffectedSOPInstanceUID or "?")[:64]
            return status_dataset(self._store(event))
        except _Refused as refused:
            logger.warning(
                "C-STORE refused: status=0x%04X sop_instance_uid=%s reason=%s",
                refused.status,
                sop_instance,
                refused.why,
            )
            return status_dataset(refused.status, refused.comment)
        except Exception as exc:  # noqa: BLE001 - never raise across the association
            logger.error(
                "C-STORE failed unexpectedly: sop_instance_uid=%s error=%s",
                sop_instance,
                type(exc).__name__,
            )
            return status_dataset(
                StoreStatus.PROCESSING_FAILURE, f"listener error ({type(exc).__name__})"
            )

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
        calling_ae = (
            "".join(ch for ch in str(event.assoc.requestor.ae_title) if ch.isprintable()).strip()[
                :16
            ]
            or None
        )
        if affected_class not in self.accepted_sop_classes:
            raise _Refused(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {affected_class} not stored",
                "SOP Class not stored by this listener",
            )
        staged = self._stage(event)
        try:
            record = _read_instance_record(
                staged,
                affected_class,
                affected_instance,
                calling_ae,
                self.storage,
                self.limits,
                self.urgent_ae_titles,
            )
            checked = self._record(record, staged)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        if checked.match is repo.ContentMatch.UNKNOWN:
            checked = self._compare_with_stored_file(checked, record)
        if checked.match is repo.ContentMatch.DIFFERENT:
            self._refuse_different_content(event, checked, record, calling_ae)
        if checked.match is repo.ContentMatch.NEW:
            self._enqueue(checked.instance_id, record)
            logger.info(
                "stored sop_instance_uid=%s study_instance_uid=%s sop_class_uid=%s "
                "instance_id=%d calling_ae_title=%s",
                record.sop_instance_uid,
                record.study_instance_uid,
                record.sop_class_uid,
                checked.instance_id,
                calling_ae,
            )
        else:
            logger.info(
                "resend of known sop_instance_uid=%s with identical content (instance_id=%d, "
                "status=%s): no new job",
                record.sop_instance_uid,
                checked.instance_id,
                checked.status,
            )
        return StoreStatus.SUCCESS

    def _record(self, record: repo.InstanceRecord, staged: Path) -> repo.CheckedRecord:
        """Place the file and record the row, or compare with the row already there."""
        key = instance_key(record.study_instance_uid, record.sop_instance_uid)
        placed = False

        def place_file() -> None:
            nonlocal placed
            try:
                self.storage.put_file(key, staged)
            except (StorageError, OSError) as exc:
                raise _Refused(
                    StoreStatus.OUT_OF_RESOURCES_STORAGE,
                    "instance could not be written",
                    "storage unavailable: retry later",
                ) from exc
            placed = True

        try:
            return repo.record_instance_checked(self.engine, record, place_file)
        except SQLAlchemyError as exc:
            if placed:
                # Not acknowledged, not recorded: leave no orphan behind. (Under the
                # UID's lock no row named this file, so nothing else refers to it.)
                with contextlib.suppress(StorageError):
                    self.storage.delete(key)
            raise _Refused(
                StoreStatus.OUT_OF_RESOURCES_DATABASE,
                f"instance could not be recorded ({type(exc).__name__})",
                "database unavailable: retry later",
            ) from exc

    def _compare_with_stored_file(
        self, checked: repo.CheckedRecord, record: repo.InstanceRecord
    ) -> repo.CheckedRecord:
        """A row recorded before content hashes were kept: hash the stored file."""
        try:
            stored = read_instance(checked.stored_uri)
        except CxrTriageError:
            stored = None
        same = stored is not None and (
            content_sha256(io.BytesIO(stored), record.transfer_syntax_uid) == record.content_sha256
        )
        match = repo.ContentMatch.SAME if same else repo.ContentMatch.DIFFERENT
        return dataclasses.replace(checked, match=match)

    def _refuse_different_content(
        self,
        event: Event,
        checked: repo.CheckedRecord,
        record: repo.InstanceRecord,
        calling_ae: str | None,
    ) -> None:
        """Record the visible event, log it, refuse with 0x0111 (raises ``_Refused``)."""
        peer = str(getattr(event.assoc.requestor, "address", "") or "")[:64] or None
        try:
            conflicts.record_conflict(
                self.engine,
                conflicts.Conflict(
                    instance_id=checked.instance_id,
                    sop_instance_uid=record.sop_instance_uid,
                    received_study_instance_uid=record.study_instance_uid,
                    stored_content_sha256=checked.stored_content_sha256,
                    received_content_sha256=record.content_sha256 or "",
                    calling_ae_title=calling_ae,
                    peer_address=peer,
                ),
            )
        except SQLAlchemyError as exc:
            logger.error("could not record the conflict (%s)", type(exc).__name__)
        same_study = checked.stored_study_instance_uid == record.study_instance_uid
        raise _Refused(
            StoreStatus.DUPLICATE_SOP_INSTANCE,
            f"SOP Instance UID already stored with different content (instance_id="
            f"{checked.instance_id}, {'same' if same_study else 'another'} Study Instance UID,"
            f" stored sha256 {str(checked.stored_content_sha256)[:12]}, received "
            f"{str(record.content_sha256)[:12]}): stored instance kept, new copy not stored; "
            "give the new image a new SOP Instance UID",
            "SOP Instance UID already stored with different content",
        )

    def _enqueue(self, instance_id: int, record: repo.InstanceRecord) -> None:
        """Enqueue after commit; a failure is left to the reconciler."""
        try:
            job = ScoreJob(
                instance_id=instance_id,
                sop_instance_uid=record.sop_instance_uid,
                storage_uri=record.storage_uri,
            )
            enqueue_instance(self.engine, self.celery_app, self.queue_name, job, record.lane)
        except Exception as exc:  # noqa: BLE001 - broker errors come in many types
            logger.warning(
                "enqueue failed for sop_instance_uid=%s instance_id=%d (%s): "
                "the reconciler will re-enqueue it",
                record.sop_instance_uid,
                instance_id,
                type(exc).__name__,
            )
