"""The write side, as small functions over an Engine: an instance is recorded, enqueued,
claimed for processing and made final (done, not eligible or failed).

Each function is one transaction. Writes are idempotent so that a redelivered job or a
resent instance never creates a second row. Reads live in ``cxr_db.reads``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert

from cxr_db.schema import Instance, Prediction, Study
from cxr_db.statuses import PENDING_STATUSES, InstanceStatus


@dataclass(frozen=True)
class InstanceRecord:
    """What the listener knows about a stored instance (no patient data)."""

    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str | None
    transfer_syntax_uid: str | None
    accession_number: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    calling_ae_title: str | None
    storage_uri: str
    size_bytes: int
    #: sha256 of the received data set (see ``dicom_listener.handlers.content_sha256``);
    #: None for rows recorded before it was kept.
    content_sha256: str | None = None


@dataclass(frozen=True)
class RecordResult:
    instance_id: int
    created: bool
    status: InstanceStatus


@dataclass(frozen=True)
class PendingJob:
    instance_id: int
    sop_instance_uid: str
    storage_uri: str


@dataclass(frozen=True)
class PredictionRecord:
    model_name: str
    model_version: str
    weights_sha256: str
    calibration_version: str | None
    logit: float
    probability: float
    threshold: float
    flagged: bool
    heatmap_png: bytes | None
    device: str
    batch_size: int
    decode_ms: float
    inference_ms: float
    worker_id: str | None


def record_instance(engine: Engine, rec: InstanceRecord) -> RecordResult:
    """Insert the study (if new) and the instance (if new). Resends return the old row."""
    with engine.begin() as conn:
        return _insert_instance(conn, rec)


def _insert_instance(conn: Connection, rec: InstanceRecord) -> RecordResult:
    study_stmt = (
        insert(Study)
        .values(
            study_instance_uid=rec.study_instance_uid,
            accession_number=rec.accession_number,
        )
        .on_conflict_do_update(
            index_elements=[Study.study_instance_uid],
            set_={
                "accession_number": func.coalesce(Study.accession_number, rec.accession_number),
                "updated_at": func.now(),
            },
        )
        .returning(Study.id)
    )
    study_id = conn.execute(study_stmt).scalar_one()
    inst_stmt = (
        insert(Instance)
        .values(
            study_id=study_id,
            sop_instance_uid=rec.sop_instance_uid,
            series_instance_uid=rec.series_instance_uid,
            sop_class_uid=rec.sop_class_uid,
            transfer_syntax_uid=rec.transfer_syntax_uid,
            modality=rec.modality,
            body_part=rec.body_part,
            view_position=rec.view_position,
            calling_ae_title=rec.calling_ae_title,
            storage_uri=rec.storage_uri,
            size_bytes=rec.size_bytes,
            status=InstanceStatus.RECEIVED,
            content_sha256=rec.content_sha256,
        )
        .on_conflict_do_nothing(index_elements=[Instance.sop_instance_uid])
        .returning(Instance.id)
    )
    new_id = conn.execute(inst_stmt).scalar_one_or_none()
    if new_id is not None:
        return RecordResult(new_id, True, InstanceStatus.RECEIVED)
    row = conn.execute(
        select(Instance.id, Instance.status).where(
            Instance.sop_instance_uid == rec.sop_instance_uid
        )
    ).one()
    return RecordResult(row.id, False, row.status)


def mark_enqueued(engine: Engine, instance_id: int) -> None:
    """received → queued, once the job is on the broker."""
    with engine.begin() as conn:
        conn.execute(
            update(Instance)
            .where(Instance.id == instance_id, Instance.status == InstanceStatus.RECEIVED)
            .values(status=InstanceStatus.QUEUED, enqueued_at=func.now(), updated_at=func.now())
        )


def unenqueued_instances(engine: Engine, older_than_s: float, limit: int = 500) -> list[PendingJob]:
    """Instances committed but never enqueued (the listener died between the two)."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.storage_uri)
            .where(
                Instance.status == InstanceStatus.RECEIVED,
                Instance.received_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
            )
            .order_by(Instance.received_at)
            .limit(limit)
        ).all()
    return [PendingJob(r.id, r.sop_instance_uid, r.storage_uri) for r in rows]


def stale_processing_instances(
    engine: Engine, older_than_s: float, limit: int = 500
) -> list[PendingJob]:
    """Instances left ``processing`` for longer than any task may run (a worker lost its
    job and could not record why). Their ``updated_at`` is touched so that one pass of
    the reconciler re-enqueues each of them once."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(Instance)
            .where(
                Instance.id.in_(
                    select(Instance.id)
                    .where(
                        Instance.status == InstanceStatus.PROCESSING,
                        Instance.updated_at
                        < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            .values(updated_at=func.now())
            .returning(Instance.id, Instance.sop_instance_uid, Instance.storage_uri)
        ).all()
    return [PendingJob(r.id, r.sop_instance_uid, r.storage_uri) for r in rows]


def start_processing(engine: Engine, instance_id: int, sop_instance_uid: str) -> PendingJob | None:
    """Claim an instance for scoring. None when it is already final (a redelivered job) or
    when the id does not name that SOP Instance UID (a stale job from another database)."""
    with engine.begin() as conn:
        row = conn.execute(
            update(Instance)
            .where(
                Instance.id == instance_id,
                Instance.sop_instance_uid == sop_instance_uid,
                Instance.status.in_(PENDING_STATUSES),
            )
            .values(
                status=InstanceStatus.PROCESSING,
                attempts=Instance.attempts + 1,
                updated_at=func.now(),
            )
            .returning(Instance.id, Instance.sop_instance_uid, Instance.storage_uri)
        ).one_or_none()
    if row is None:
        return None
    return PendingJob(row.id, row.sop_instance_uid, row.storage_uri)


_Unscored = Literal[InstanceStatus.NOT_ELIGIBLE, InstanceStatus.FAILED]


def _finish(engine: Engine, instance_id: int, status: _Unscored, reason: str) -> None:
    """→ not_eligible | failed, unless the instance was already scored."""
    with engine.begin() as conn:
        conn.execute(
            update(Instance)
            .where(Instance.id == instance_id, Instance.status != InstanceStatus.DONE)
            .values(status=status, reason=reason, updated_at=func.now())
        )


def record_not_eligible(engine: Engine, instance_id: int, reason: str) -> None:
    _finish(engine, instance_id, InstanceStatus.NOT_ELIGIBLE, reason)


def record_failed(engine: Engine, instance_id: int, reason: str) -> None:
    _finish(engine, instance_id, InstanceStatus.FAILED, reason[:2000])


def record_prediction(engine: Engine, instance_id: int, pred: PredictionRecord) -> None:
    """Upsert the prediction, mark the instance done and raise (never lower) the study."""
    values = {
        "instance_id": instance_id,
        "model_name": pred.model_name,
        "model_version": pred.model_version,
        "weights_sha256": pred.weights_sha256,
        "calibration_version": pred.calibration_version,
        "logit": pred.logit,
        "probability": pred.probability,
        "threshold": pred.threshold,
        "flagged": pred.flagged,
        "heatmap_png": pred.heatmap_png,
        "device": pred.device,
        "batch_size": pred.batch_size,
        "decode_ms": pred.decode_ms,
        "inference_ms": pred.inference_ms,
        "worker_id": pred.worker_id,
    }
    upsert = insert(Prediction).values(**values)
    upsert = upsert.on_conflict_do_update(
        constraint="uq_prediction",
        set_={k: upsert.excluded[k] for k in values if k != "instance_id"}
        | {"created_at": func.now()},
    )
    with engine.begin() as conn:
        conn.execute(upsert)
        study_id = conn.execute(
            update(Instance)
            .where(Instance.id == instance_id)
            .values(status=InstanceStatus.DONE, reason=None, updated_at=func.now())
            .returning(Instance.study_id)
        ).scalar_one()
        conn.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                flagged=Study.flagged | pred.flagged,
                score=func.greatest(func.coalesce(Study.score, pred.probability), pred.probability),
                updated_at=func.now(),
            )
        )


# ---------------------------------------------------------------------------------------
# Same SOP Instance UID, different content (issue 12 defect 4; owned by the listener side)


class ContentMatch(StrEnum):
    """How a received instance compares with what is recorded under its SOP Instance UID."""

    NEW = "new"  # no row: recorded now, ``place_file`` ran
    SAME = "same"  # a row with the same content_sha256: a resend, nothing written
    DIFFERENT = "different"  # a row with other content: nothing written
    UNKNOWN = "unknown"  # a row recorded before content_sha256 was kept: nothing written


@dataclass(frozen=True)
class CheckedRecord:
    """What :func:`record_instance_checked` did; ``stored_*`` describe the existing row."""

    match: ContentMatch
    instance_id: int
    status: InstanceStatus
    stored_study_instance_uid: str
    stored_content_sha256: str | None
    stored_uri: str


def record_instance_checked(
    engine: Engine, rec: InstanceRecord, place_file: Callable[[], None]
) -> CheckedRecord:
    """Record ``rec`` unless its SOP Instance UID is already recorded; compare contents.

    One transaction under a transaction-scoped advisory lock on the SOP Instance UID, so
    two listeners (or associations) receiving the same UID at once are serialised: the
    first runs ``place_file`` (moves the file into storage) and inserts the rows; every
    later one finds the row and gets SAME, DIFFERENT or UNKNOWN without writing anything
    (no file replaced, no study row created). ``place_file`` raising, or the commit
    failing, rolls the rows back; the caller removes a placed file then.
    """
    with engine.begin() as conn:
        conn.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(rec.sop_instance_uid, 0)))
        )
        row = conn.execute(
            select(
                Instance.id,
                Instance.status,
                Instance.content_sha256,
                Instance.storage_uri,
                Study.study_instance_uid,
            )
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_instance_uid == rec.sop_instance_uid)
        ).one_or_none()
        if row is None:
            place_file()
            created = _insert_instance(conn, rec)
            return CheckedRecord(
                ContentMatch.NEW,
                created.instance_id,
                created.status,
                rec.study_instance_uid,
                rec.content_sha256,
                rec.storage_uri,
            )
        if row.content_sha256 is None:
            match = ContentMatch.UNKNOWN
        elif row.content_sha256 == rec.content_sha256:
            match = ContentMatch.SAME
        else:
            match = ContentMatch.DIFFERENT
        return CheckedRecord(
            match, row.id, row.status, row.study_instance_uid, row.content_sha256, row.storage_uri
        )
