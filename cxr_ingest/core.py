"""The ingest rules, once, for every way in: :func:`ingest`.

In order, for one received Part 10 file (a staged file, or bytes) and its :class:`Source`:

1. our own result object (its announced SOP class one we create, its SOP Instance UID
   under our UID root)? acknowledge and drop it, unread;
2. an announced SOP class we do not store (nor accept for the loopback check)? refuse;
3. take the file into the storage's staging folder (bytes are written there, hashed as
   they are written); storage unavailable: refuse, retry later;
4. parse the header **once**, bounded, and check it against the decode limits
   (:mod:`cxr_ingest.header`): deflate bombs, absurd or over-limit dimensions, missing or
   truncated Pixel Data are refused before anything is stored; one of our own objects
   (by its header) is acknowledged and dropped; one that only carries our result marker
   is refused (:mod:`cxr_ingest.own_objects`);
5. the UIDs: present, valid, the same as announced (SOP class and instance by C-STORE, the
   study by a STOW-RS request to ``/studies/{study}``), a class we store;
6. the content hash: the one computed while the file was written, else one read of it;
7. under a lock on the SOP Instance UID: a new UID first claims its study, whose patient
   its first instance fixed (:mod:`cxr_ingest.identity`): another patient is refused and
   the conflict recorded, nothing stored; else it is moved into place atomically (fsync +
   rename) and recorded (the row holds the patient context the study page shows); a
   known UID with identical content is a duplicate (success, no second job); with
   different content it is refused and the conflict recorded, the stored copy untouched;
8. after the commit, the scoring job is enqueued and the row marked queued; a broker
   failure leaves it to the reconciler (the outcome is still STORED).

Nothing is left in the staging folder. :func:`ingest` never raises: every failure is an
:class:`~cxr_ingest.outcome.Outcome` with a :class:`~cxr_ingest.outcome.RefusalCode`.
Logs name UIDs, never patient data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from celery import Celery
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cxr_common.errors import CxrTriageError, StorageError
from cxr_common.storage import Storage, instance_key, read_instance, sanitise_uid
from cxr_db.conflicts import store as conflicts
from cxr_db.conflicts.tables import ConflictKind
from cxr_db.instances import writes as repo
from cxr_imaging.limits import (
    STATUS_DECLARED_SIZE,
    STATUS_HEADER_SIZE,
    STATUS_INFLATED_SIZE,
    STATUS_PIXEL_DATA_LENGTH,
    DecodeLimits,
    InputRefusedError,
)
from cxr_ingest.content import ContentDigest, ContentHasher, content_sha256
from cxr_ingest.enqueue import enqueue_instance
from cxr_ingest.header import (
    ReceivedHeader,
    header_text,
    optional_uid,
    patient_context,
    read_received,
)
from cxr_ingest.identity import IDENTITY_KEYWORDS, PatientIdentity, patient_identity
from cxr_ingest.outcome import Disposition, Outcome, RefusalCode, Source, refused
from cxr_ingest.own_objects import OWN_OBJECT_SOP_CLASSES, is_own_object, looks_like_ours
from cxr_queue import ScoreJob, choose_lane, header_asks_urgent

logger = logging.getLogger(__name__)

#: SOP classes stored. CR, DX and Secondary Capture carry chest films (real ones often
#: arrive as SC). CT is accepted on purpose so that a study routed here by mistake becomes
#: a visible "not eligible" row on the worklist instead of a silent failure at the
#: modality; the worker's eligibility rules never score it.
STORED_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    CTImageStorage,
)

#: Limit refusals by their C-STORE status number (``cxr_imaging.limits``).
_LIMIT_CODES = {
    STATUS_PIXEL_DATA_LENGTH: RefusalCode.PIXEL_DATA_LENGTH,
    STATUS_DECLARED_SIZE: RefusalCode.DECLARED_SIZE,
    STATUS_INFLATED_SIZE: RefusalCode.INFLATED_SIZE,
    STATUS_HEADER_SIZE: RefusalCode.HEADER_SIZE,
}
_UNDECODABLE_COMMENT = "data set cannot be decoded: resend"


@dataclass(frozen=True)
class Ingest:
    """What ingest needs: where files and rows go, where jobs go, the limits, our UID
    root (None: no own-object check) and the patient key (``cxr_ingest.identity``: every
    process that ingests must use the installation's one key,
    ``load_or_create_patient_key``; empty: unkeyed hashes)."""

    engine: Engine
    storage: Storage
    celery_app: Celery
    queue_name: str
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    uid_root: str | None = None
    stored_sop_classes: frozenset[str] = frozenset(STORED_SOP_CLASSES)
    #: Calling AE titles whose instances go to the urgent lane (``cxr_queue.lanes``).
    urgent_ae_titles: frozenset[str] = frozenset()
    patient_key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Received:
    """A received Part 10 file (File Meta included): ``path`` (ingest takes it over: it
    is moved into place or removed) or ``data``. ``digest``: its content hash computed
    while it was written (:class:`~cxr_ingest.content.ContentHasher`), if any."""

    path: Path | None = None
    data: bytes | None = None
    digest: ContentDigest | None = None


class _Refusal(Exception):
    """Internal: stop ingesting with this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def _refuse(
    code: RefusalCode,
    reason: str,
    comment: str | None = None,
    *,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    study_instance_uid: str | None = None,
    instance_id: int | None = None,
) -> NoReturn:
    raise _Refusal(
        refused(
            code,
            reason,
            comment,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            study_instance_uid=study_instance_uid,
            instance_id=instance_id,
        )
    )


def ingest(rules: Ingest, received: Received, source: Source) -> Outcome:
    """Ingest one received instance from ``source``; never raises (see the module
    docstring). Stored, duplicate and own objects are logged here; refusals by the
    adapter, with its protocol's answer (UIDs only)."""
    staged: Path | None = None
    try:
        outcome = _own_or_unstored(rules, source)
        if outcome is None:
            staged, digest = _stage(rules.storage, received)
            outcome = _ingest_staged(rules, staged, digest, source)
    except _Refusal as refusal:
        outcome = refusal.outcome
    except Exception as exc:  # noqa: BLE001 - ingest answers, it never raises
        outcome = refused(
            RefusalCode.INTERNAL_ERROR,
            f"listener error ({type(exc).__name__})",
            sop_instance_uid=source.announced_sop_instance_uid,
        )
    finally:
        _discard(received, staged)
    return outcome


def _discard(received: Received, staged: Path | None) -> None:
    """Remove what was received and not moved into place."""
    for path in (staged, received.path):
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def _own_or_unstored(rules: Ingest, source: Source) -> Outcome | None:
    """Steps 1 and 2, from the request alone (no read)."""
    announced = source.announced_sop_instance_uid
    if rules.uid_root is not None and is_own_object(rules.uid_root, source):
        return _own_object(announced, source.announced_sop_class_uid)
    cls = source.announced_sop_class_uid
    if cls is not None and cls not in rules.stored_sop_classes:
        if rules.uid_root is None or cls not in OWN_OBJECT_SOP_CLASSES:
            _refuse_class(cls, announced)
    return None


def _own_object(sop_instance_uid: str | None, sop_class_uid: str | None) -> Outcome:
    logger.info(
        "our own result object came back (sop_instance_uid=%s): acknowledged, "
        "not recorded, not scored, not sent again",
        (sop_instance_uid or "?")[:64],
    )
    return Outcome(
        Disposition.OWN_OBJECT,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        reason="our own result object: acknowledged and dropped",
    )


def _refuse_class(sop_class_uid: str, sop_instance_uid: str | None) -> NoReturn:
    _refuse(
        RefusalCode.SOP_CLASS_NOT_STORED,
        f"SOP class {sop_class_uid[:64]} not stored",
        "SOP Class not stored by this listener",
        sop_class_uid=sop_class_uid[:64],
        sop_instance_uid=sop_instance_uid,
    )


def _stage(storage: Storage, received: Received) -> tuple[Path, ContentDigest | None]:
    """Step 3: the received file under a name of ours in the staging folder."""
    try:
        fd, name = tempfile.mkstemp(dir=storage.staging_dir(), suffix=".part")
    except (OSError, StorageError) as exc:
        raise _Refusal(
            refused(RefusalCode.STORAGE_UNAVAILABLE, "storage staging folder is not writable")
        ) from exc
    staged = Path(name)
    digest = received.digest
    try:
        if received.path is not None:
            os.close(fd)
            shutil.move(received.path, staged)
        else:
            hasher = ContentHasher()
            with os.fdopen(fd, "wb") as handle:
                data = received.data or b""
                handle.write(data)
                hasher.update(data)
            digest = hasher.digest()
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise _Refusal(
            refused(RefusalCode.STORAGE_UNAVAILABLE, f"cannot stage instance: {exc.strerror}")
        ) from exc
    return staged, digest


def _read(rules: Ingest, staged: Path, source: Source) -> ReceivedHeader:
    """Step 4: the one bounded parse."""
    outside = (
        source.announced_sop_class_uid is not None
        and source.announced_sop_class_uid not in rules.stored_sop_classes
    )

    def exempt(ds: Dataset) -> bool:
        # our own object, or a class we do not store (announced, or the header's when
        # nothing was announced): no limit applies, the class decides
        return (
            outside
            or _is_own_dataset(rules, ds, source)
            or (source.announced_sop_class_uid is None and _unstored_class(rules, ds) is not None)
        )

    try:
        return read_received(staged, rules.limits, exempt)
    except InputRefusedError as exc:
        code = _LIMIT_CODES.get(exc.store_status, RefusalCode.INPUT_REFUSED)
        _refuse(code, exc.reason, exc.error_comment)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        if outside:
            _refuse_class(str(source.announced_sop_class_uid), source.announced_sop_instance_uid)
        _refuse(
            RefusalCode.UNDECODABLE,
            f"data set cannot be decoded ({type(exc).__name__})",
            _UNDECODABLE_COMMENT,
        )


def _unstored_class(rules: Ingest, ds: Dataset) -> str | None:
    """The header's SOP Class UID when it is present and not one we store."""
    try:
        raw = ds.get("SOPClassUID")
    except Exception:  # noqa: BLE001 - a corrupt element: the UID checks answer for it
        return None
    return None if raw is None or str(raw) in rules.stored_sop_classes else str(raw)


def _header_uid(ds: Dataset, keyword: str) -> str | None:
    """A UID of the header when it is present and valid, else None (never raises)."""
    try:
        raw = ds.get(keyword)
        return None if raw is None else sanitise_uid(str(raw))
    except Exception:  # noqa: BLE001 - a corrupt element: no UID to name
        return None


def _is_own_dataset(rules: Ingest, ds: Dataset, source: Source) -> bool:
    return rules.uid_root is not None and is_own_object(rules.uid_root, source, ds)


def _record(
    rules: Ingest,
    header: ReceivedHeader,
    staged: Path,
    digest: ContentDigest | None,
    source: Source,
) -> repo.InstanceRecord:
    """Step 5 and 6: the row to record, or a refusal."""
    try:
        ds = header.dataset
        # Force every element we need to be decoded now, inside this try.
        raw_class = ds.get("SOPClassUID")
        raw_instance = ds.get("SOPInstanceUID")
        raw_study = ds.get("StudyInstanceUID")
        meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        accession = header_text(ds, "AccessionNumber", 64)
        modality = header_text(ds, "Modality", 16)
        body_part = header_text(ds, "BodyPartExamined", 64)
        view = header_text(ds, "ViewPosition", 16)
        series = optional_uid(ds, "SeriesInstanceUID")
        context = patient_context(ds)
        identity = patient_identity(ds, rules.patient_key)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        _refuse(
            RefusalCode.UNDECODABLE,
            f"data set cannot be decoded ({type(exc).__name__})",
            _UNDECODABLE_COMMENT,
        )
    if raw_class is None or raw_instance is None or raw_study is None:
        _refuse(RefusalCode.MISSING_UID, "SOP Class, SOP Instance or Study Instance UID missing")
    try:
        sop_class = sanitise_uid(str(raw_class))
        sop_instance = sanitise_uid(str(raw_instance))
        study = sanitise_uid(str(raw_study))
    except ValueError:
        _refuse(RefusalCode.INVALID_UID, "a required UID is not valid")
    announced_class = source.announced_sop_class_uid
    if announced_class is not None and sop_class != announced_class:
        _refuse(
            RefusalCode.SOP_CLASS_MISMATCH,
            f"data set SOP Class {sop_class} differs from the request's {announced_class}",
            "SOP Class UID differs from the C-STORE request's",
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
        )
    announced_instance = source.announced_sop_instance_uid
    if announced_instance is not None and sop_instance != announced_instance:
        _refuse(
            RefusalCode.SOP_INSTANCE_MISMATCH,
            "data set SOP Instance UID differs from the request's",
            "SOP Instance UID differs from the C-STORE request's",
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
        )
    announced_study = source.announced_study_instance_uid
    if announced_study is not None and study != announced_study:
        _refuse(
            RefusalCode.STUDY_INSTANCE_MISMATCH,
            f"data set Study Instance UID {study} is not the request's {announced_study[:64]}",
            "Study Instance UID differs from the request's",
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
            study_instance_uid=study,
        )
    if sop_class not in rules.stored_sop_classes:
        _refuse_class(sop_class, sop_instance)
    syntax = str(meta_ts) if meta_ts else None
    if digest is not None and digest.transfer_syntax_uid == syntax:
        sha256 = digest.sha256
    else:
        sha256 = content_sha256(staged, syntax)
    return repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        series_instance_uid=series,
        transfer_syntax_uid=syntax,
        accession_number=accession,
        modality=modality,
        body_part=body_part,
        view_position=view,
        calling_ae_title=source.calling_ae_title,
        storage_uri=rules.storage.uri(instance_key(study, sop_instance)),
        size_bytes=staged.stat().st_size,
        content_sha256=sha256,
        patient_context=context,
        lane=choose_lane(
            source.calling_ae_title, header_asks_urgent(header.dataset), rules.urgent_ae_titles
        ),
        patient_identity=identity.as_json(),
    )


def _ingest_staged(
    rules: Ingest, staged: Path, digest: ContentDigest | None, source: Source
) -> Outcome:
    header = _read(rules, staged, source)
    if header.exempt:
        # a transport that announces nothing (STOW-RS) names the instance by its header
        instance = source.announced_sop_instance_uid or _header_uid(
            header.dataset, "SOPInstanceUID"
        )
        if _is_own_dataset(rules, header.dataset, source):
            sop_class = source.announced_sop_class_uid or _header_uid(header.dataset, "SOPClassUID")
            return _own_object(instance, sop_class)
        unstored = source.announced_sop_class_uid or _unstored_class(rules, header.dataset)
        _refuse_class(str(unstored), instance)
    if looks_like_ours(header.dataset):
        _refuse(
            RefusalCode.FOREIGN_RESULT_OBJECT,
            "carries the cxr-triage result marker (Manufacturer, SeriesDescription) but is "
            "not one of our objects (SOP class and UID root): not stored",
            "cxr-triage result marker without our UID root: not stored",
            sop_instance_uid=source.announced_sop_instance_uid
            or _header_uid(header.dataset, "SOPInstanceUID"),
            sop_class_uid=source.announced_sop_class_uid,
        )
    record = _record(rules, header, staged, digest, source)
    placed = _place_and_record(rules, record, staged)
    if isinstance(placed, repo.PatientMismatch):
        _refuse_other_patient(rules, placed, record, source)
    checked = placed
    if checked.match is repo.ContentMatch.UNKNOWN:
        checked = _compare_with_stored_file(checked, record)
    if checked.match is repo.ContentMatch.DIFFERENT:
        _refuse_different_content(rules, checked, record, source)
    if checked.match is repo.ContentMatch.NEW:
        enqueued = _enqueue(rules, checked.instance_id, record)
        logger.info(
            "stored sop_instance_uid=%s study_instance_uid=%s sop_class_uid=%s "
            "instance_id=%d calling_ae_title=%s transport=%s",
            record.sop_instance_uid,
            record.study_instance_uid,
            record.sop_class_uid,
            checked.instance_id,
            record.calling_ae_title,
            source.transport,
        )
        return Outcome(
            Disposition.STORED,
            instance_id=checked.instance_id,
            reason="stored",
            enqueued=enqueued,
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            study_instance_uid=record.study_instance_uid,
        )
    logger.info(
        "resend of known sop_instance_uid=%s with identical content (instance_id=%d, "
        "status=%s): no new job",
        record.sop_instance_uid,
        checked.instance_id,
        checked.status,
    )
    return Outcome(
        Disposition.DUPLICATE,
        instance_id=checked.instance_id,
        reason="already stored with identical content",
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=record.sop_class_uid,
        study_instance_uid=record.study_instance_uid,
    )


def _place_and_record(
    rules: Ingest, record: repo.InstanceRecord, staged: Path
) -> repo.CheckedRecord | repo.PatientMismatch:
    """Step 7: place the file and record the row, or compare with the row already there."""
    key = instance_key(record.study_instance_uid, record.sop_instance_uid)
    placed = False
    mine = record.patient_identity

    def place_file() -> None:
        nonlocal placed
        try:
            rules.storage.put_file(key, staged)
        except (StorageError, OSError) as exc:
            raise _Refusal(
                refused(
                    RefusalCode.STORAGE_UNAVAILABLE,
                    "instance could not be written",
                    "storage unavailable: retry later",
                    sop_instance_uid=record.sop_instance_uid,
                    sop_class_uid=record.sop_class_uid,
                )
            ) from exc
        placed = True

    try:
        return repo.record_instance_checked(
            rules.engine, record, place_file, same_patient=lambda stored: stored == mine
        )
    except SQLAlchemyError as exc:
        if placed:
            # Not acknowledged, not recorded: leave no orphan behind. (Under the UID's
            # lock no row named this file, so nothing else refers to it.)
            with contextlib.suppress(StorageError):
                rules.storage.delete(key)
        _refuse(
            RefusalCode.DATABASE_UNAVAILABLE,
            f"instance could not be recorded ({type(exc).__name__})",
            "database unavailable: retry later",
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
        )


def _compare_with_stored_file(
    checked: repo.CheckedRecord, record: repo.InstanceRecord
) -> repo.CheckedRecord:
    """A row recorded before content hashes were kept: hash the stored file."""
    try:
        stored = read_instance(checked.stored_uri)
    except CxrTriageError:
        stored = None
    same = stored is not None and (
        content_sha256(io.BytesIO(stored), record.transfer_syntax_uid) == record.content_sha256
    )
    return replace(checked, match=repo.ContentMatch.SAME if same else repo.ContentMatch.DIFFERENT)


def _refuse_different_content(
    rules: Ingest, checked: repo.CheckedRecord, record: repo.InstanceRecord, source: Source
) -> NoReturn:
    """Record the visible event and refuse (raises)."""
    try:
        conflicts.record_conflict(
            rules.engine,
            conflicts.Conflict(
                instance_id=checked.instance_id,
                sop_instance_uid=record.sop_instance_uid,
                received_study_instance_uid=record.study_instance_uid,
                stored_content_sha256=checked.stored_content_sha256,
                received_content_sha256=record.content_sha256 or "",
                calling_ae_title=record.calling_ae_title,
                peer_address=(source.peer_address or "")[:64] or None,
            ),
        )
    except SQLAlchemyError as exc:
        logger.error("could not record the conflict (%s)", type(exc).__name__)
    same_study = checked.stored_study_instance_uid == record.study_instance_uid
    _refuse(
        RefusalCode.CONTENT_CONFLICT,
        f"SOP Instance UID already stored with different content (instance_id="
        f"{checked.instance_id}, {'same' if same_study else 'another'} Study Instance UID,"
        f" stored sha256 {str(checked.stored_content_sha256)[:12]}, received "
        f"{str(record.content_sha256)[:12]}): stored instance kept, new copy not stored; "
        "give the new image a new SOP Instance UID",
        "SOP Instance UID already stored with different content",
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=record.sop_class_uid,
        study_instance_uid=record.study_instance_uid,
        instance_id=checked.instance_id,
    )


def _refuse_other_patient(
    rules: Ingest, mismatch: repo.PatientMismatch, record: repo.InstanceRecord, source: Source
) -> NoReturn:
    """The study names another patient: record the visible event and refuse (raises).
    Reasons and comments name attributes, never their values."""
    stored = PatientIdentity.from_json(mismatch.stored_patient_identity)
    received = PatientIdentity.from_json(record.patient_identity or {})
    if not stored.same_key(received):
        _refuse(
            RefusalCode.INTERNAL_ERROR,
            f"study_instance_uid={record.study_instance_uid}: its patient was recorded under "
            "another patient key (CXR_PATIENT_KEY or CXR_DATA_DIR/patient-key differs "
            "between the processes that ingest): not stored; give every process the same key",
            "patient key differs between listeners: not stored",
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            study_instance_uid=record.study_instance_uid,
        )
    differing = received.differing(stored) or IDENTITY_KEYWORDS
    try:
        conflicts.record_conflict(
            rules.engine,
            conflicts.Conflict(
                instance_id=None,
                kind=ConflictKind.PATIENT,
                study_id=mismatch.study_id,
                differing=",".join(differing),
                sop_instance_uid=record.sop_instance_uid,
                received_study_instance_uid=record.study_instance_uid,
                stored_content_sha256=None,
                received_content_sha256=record.content_sha256 or "",
                calling_ae_title=record.calling_ae_title,
                peer_address=(source.peer_address or "")[:64] or None,
            ),
        )
    except SQLAlchemyError as exc:
        logger.error("could not record the patient conflict (%s)", type(exc).__name__)
    _refuse(
        RefusalCode.PATIENT_CONFLICT,
        f"study_instance_uid={record.study_instance_uid} is stored for another patient "
        f"({', '.join(differing)} differ from its first instance): not stored, conflict "
        "recorded; correct the patient or the Study Instance UID at the source and resend",
        "Study stored for another patient: not stored",
        sop_instance_uid=record.sop_instance_uid,
        sop_class_uid=record.sop_class_uid,
        study_instance_uid=record.study_instance_uid,
    )


def _enqueue(rules: Ingest, instance_id: int, record: repo.InstanceRecord) -> bool:
    """Step 8: enqueue after commit; a failure is left to the reconciler."""
    try:
        job = ScoreJob(
            instance_id=instance_id,
            sop_instance_uid=record.sop_instance_uid,
            storage_uri=record.storage_uri,
        )
        enqueue_instance(rules.engine, rules.celery_app, rules.queue_name, job, record.lane)
    except Exception as exc:  # noqa: BLE001 - broker errors come in many types
        logger.warning(
            "enqueue failed for sop_instance_uid=%s instance_id=%d (%s): "
            "the reconciler will re-enqueue it",
            record.sop_instance_uid,
            instance_id,
            type(exc).__name__,
        )
        return False
    return True
