"""The write side, as small functions over an Engine: an instance is recorded, enqueued,
claimed for processing and made final (done, not eligible or failed).

Each function is one transaction. Writes are idempotent so that a redelivered job or a
resent instance never creates a second row. Reads live in ``cxr_db.instances.reads`` (one
instance) and ``cxr_db.worklist.reads`` (studies).

Leases (the second half of this module): a worker claims an instance
(:func:`claim_instance`) and holds a lease on it that it renews while it works
(:func:`renew_leases`); anyone may reclaim an expired lease. The reconciler's sweeps
(:func:`take_unenqueued`, :func:`take_orphaned_queued`, :func:`take_expired_leases`) pick
rows with ``FOR UPDATE SKIP LOCKED`` and stamp them in the same statement, so several
listeners never re-enqueue one row twice in one grace period; the broker is told after
the commit, and a job published twice is harmless (only one claim can hold the lease).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    func,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from cxr_db.instances.statuses import FINAL_STATUSES, PENDING_STATUSES, InstanceStatus
from cxr_db.instances.tables import Instance, Prediction, Study


@dataclass(frozen=True)
class InstanceRecord:
    """What the listener knows about a stored instance (patient data only in
    ``patient_context``)."""

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
    #: sha256 of the received data set (see ``cxr_ingest.content.content_sha256``);
    #: None for rows recorded before it was kept.
    content_sha256: str | None = None
    #: The patient context the study page shows (``cxr_ingest.header.patient_context``):
    #: patient data, kept on the row for the signed-in page only; never logged.
    patient_context: dict[str, Any] | None = None
    #: The scoring lane (``cxr_queue.lanes.Lane`` value): ``urgent`` or ``normal``.
    lane: str = "normal"
    #: Keyed hashes of the patient's identifying attributes (``cxr_ingest.identity``, no
    #: values): the study's patient when this instance is its first; None: not checked.
    patient_identity: dict[str, Any] | None = None


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
    #: The scoring lane the row was recorded with (``cxr_queue.lanes.Lane`` value).
    lane: str = "normal"


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
    score_lower: float | None = None
    """The score's interval (revision 0010; None: the calibration has none)."""
    score_upper: float | None = None


def record_instance(engine: Engine, rec: InstanceRecord) -> RecordResult:
    """Insert the study (if new) and the instance (if new). Resends return the old row."""
    with engine.begin() as conn:
        return _insert_instance(conn, rec)


def _upsert_study(conn: Connection, rec: InstanceRecord) -> tuple[int, dict[str, Any] | None]:
    """Insert the study (if new); return its id and its patient identity. The first
    instance's ``patient_identity`` fixes the study's (a study without one takes it); a
    concurrent first instance of the same study waits on the row here, then sees it."""
    stmt = insert(Study).values(
        study_instance_uid=rec.study_instance_uid,
        accession_number=rec.accession_number,
        # SQL NULL, not JSON null: a study without an identity is claimed by the next one
        patient_identity=null() if rec.patient_identity is None else rec.patient_identity,
    )
    row = conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[Study.study_instance_uid],
            set_={
                "accession_number": func.coalesce(Study.accession_number, rec.accession_number),
                "patient_identity": func.coalesce(
                    Study.patient_identity, stmt.excluded.patient_identity
                ),
                "updated_at": func.now(),
            },
        ).returning(Study.id, Study.patient_identity)
    ).one()
    return int(row.id), row.patient_identity


def _insert_instance(
    conn: Connection, rec: InstanceRecord, study_id: int | None = None
) -> RecordResult:
    if study_id is None:
        study_id, _ = _upsert_study(conn, rec)
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
            patient_context=rec.patient_context,
            lane=rec.lane,
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


_NO_LEASE: dict[str, None] = {"lease_owner": None, "lease_expires_at": None}

_Unscored = Literal[InstanceStatus.NOT_ELIGIBLE, InstanceStatus.FAILED]


def _finish(engine: Engine, instance_id: int, status: _Unscored, reason: str) -> None:
    """→ not_eligible | failed, unless the instance was already scored."""
    with engine.begin() as conn:
        conn.execute(
            update(Instance)
            .where(Instance.id == instance_id, Instance.status != InstanceStatus.DONE)
            .values(status=status, reason=reason, updated_at=func.now(), **_NO_LEASE)
        )


def record_not_eligible(engine: Engine, instance_id: int, reason: str) -> None:
    _finish(engine, instance_id, InstanceStatus.NOT_ELIGIBLE, reason)


def record_failed(engine: Engine, instance_id: int, reason: str) -> None:
    _finish(engine, instance_id, InstanceStatus.FAILED, reason[:2000])


@dataclass(frozen=True)
class PopulationNote:
    """The population check of an instance (``cxr_common.population``) and its reason."""

    population: str
    reason: str
    #: Which check decided (``cxr_common.population.PopulationCheck``), None: not recorded.
    check: str | None = None
    #: The image's distance from the model's training distribution (None: not checked).
    image_distance: float | None = None


def _prediction_upsert(
    instance_id: int, pred: PredictionRecord, *, triage: bool, model_role: str
) -> Any:
    values = {
        "instance_id": instance_id,
        "model_name": pred.model_name,
        "model_version": pred.model_version,
        "weights_sha256": pred.weights_sha256,
        "calibration_version": pred.calibration_version,
        "logit": pred.logit,
        "probability": pred.probability,
        "threshold": pred.threshold,
        # a prediction that may not triage never flags (its score is shown in shadow)
        "flagged": pred.flagged and triage,
        "heatmap_png": pred.heatmap_png,
        "device": pred.device,
        "batch_size": pred.batch_size,
        "decode_ms": pred.decode_ms,
        "inference_ms": pred.inference_ms,
        "worker_id": pred.worker_id,
        "score_lower": pred.score_lower,
        "score_upper": pred.score_upper,
        "triage": triage,
        "model_role": model_role,
    }
    upsert = insert(Prediction).values(**values)
    return upsert.on_conflict_do_update(
        constraint="uq_prediction",
        set_={k: upsert.excluded[k] for k in values if k != "instance_id"}
        | {"created_at": func.now()},
    )


def record_shadow_prediction(engine: Engine, instance_id: int, pred: PredictionRecord) -> None:
    """Upsert a shadow model's prediction: stored under its version, never flagged, and it
    changes neither the instance nor the study."""
    with engine.begin() as conn:
        conn.execute(_prediction_upsert(instance_id, pred, triage=False, model_role="shadow"))


def record_prediction(
    engine: Engine,
    instance_id: int,
    pred: PredictionRecord,
    *,
    triage: bool = True,
    population: PopulationNote | None = None,
) -> None:
    """Upsert the prediction, mark the instance done and raise (never lower) the study.

    With ``triage=False`` (an instance outside the validated population) the score is
    stored for display only: the study's flag and score stay as they were, so a study with
    no triaging score stays with the unscored ones that need a normal read."""
    instance_values: dict[str, Any] = {
        "status": InstanceStatus.DONE,
        "reason": None,
        "updated_at": func.now(),
        **_NO_LEASE,
    }
    if population is not None:
        instance_values |= {
            "population": population.population,
            "population_reason": population.reason[:2000],
            "population_check": population.check,
            "image_distance": population.image_distance,
        }
    with engine.begin() as conn:
        conn.execute(_prediction_upsert(instance_id, pred, triage=triage, model_role="active"))
        study_id = conn.execute(
            update(Instance)
            .where(Instance.id == instance_id)
            .values(instance_values)
            .returning(Instance.study_id)
        ).scalar_one()
        if not triage:
            return
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
# Leases, attempts and the reconciler's sweeps (issue 12)


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"
    """The caller holds the lease and scores the instance."""
    FINAL = "final"
    """Already done, not eligible or failed, or unknown (a redelivered or stale job)."""
    BUSY = "busy"
    """Another live worker holds the lease (a duplicate message)."""
    EXHAUSTED = "exhausted"
    """Claimed ``max_attempts`` times without finishing: now failed with a reason."""


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    job: PendingJob | None = None
    attempts: int = 0
    reason: str | None = None


def _seconds(value: float) -> ColumnElement[Any]:
    return func.make_interval(0, 0, 0, 0, 0, 0, float(value))


def _ago(seconds: float) -> ColumnElement[Any]:
    return func.now() - _seconds(seconds)


def crash_reason(attempts: int, study_instance_uid: str) -> str:
    """What staff read when workers stopped ``attempts`` times while scoring one file."""
    return (
        f"a worker stopped {attempts} times while scoring this file (crashed, killed or out "
        "of memory), so it is not tried again: read the image without a score; check the "
        "file at the modality and contact support if it recurs; after fixing, requeue "
        f"with `cxr-triage requeue --study {study_instance_uid}`"
    )


def claim_instance(
    engine: Engine,
    instance_id: int,
    sop_instance_uid: str,
    *,
    owner: str,
    lease_s: float,
    max_attempts: int,
) -> Claim:
    """Claim an instance for scoring: lock its row, then take the lease if it is free.

    The row is named by its id, so this waits for a short row lock (``lock_timeout`` 5 s)
    rather than skipping it: the handler marking it queued right after publishing must
    not make the job drop it. A claim adds one to ``attempts``; :func:`mark_decoded` (the
    file was read and decoded) or :func:`release_claim` (a transient error, retried) take
    it off again, so what stays counts the workers that died on this file. A row that
    reached ``max_attempts`` is failed with :func:`crash_reason` instead of being tried
    again. The same owner reclaiming its own row (a retry in the same process) adds no
    attempt.
    """
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        row = conn.execute(
            select(
                Instance.id,
                Instance.status,
                Instance.attempts,
                Instance.lease_owner,
                (func.coalesce(Instance.lease_expires_at > func.now(), False)).label("live"),
                Instance.storage_uri,
                Study.study_instance_uid,
            )
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.id == instance_id, Instance.sop_instance_uid == sop_instance_uid)
            .with_for_update(of=Instance)
        ).one_or_none()
        if row is None or row.status in FINAL_STATUSES:
            return Claim(ClaimState.FINAL)
        own = row.status == InstanceStatus.PROCESSING and row.lease_owner == owner
        if row.status == InstanceStatus.PROCESSING and row.live and not own:
            return Claim(ClaimState.BUSY, attempts=row.attempts)
        if not own and row.attempts >= max_attempts:
            reason = crash_reason(row.attempts, row.study_instance_uid)
            conn.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(
                    status=InstanceStatus.FAILED, reason=reason, updated_at=func.now(), **_NO_LEASE
                )
            )
            return Claim(ClaimState.EXHAUSTED, attempts=row.attempts, reason=reason)
        attempts = row.attempts + (0 if own else 1)
        conn.execute(
            update(Instance)
            .where(Instance.id == instance_id)
            .values(
                status=InstanceStatus.PROCESSING,
                attempts=attempts,
                lease_owner=owner,
                lease_expires_at=func.now() + _seconds(lease_s),
                updated_at=func.now(),
            )
        )
    return Claim(
        ClaimState.CLAIMED, PendingJob(row.id, sop_instance_uid, row.storage_uri), attempts
    )


def renew_leases(
    engine: Engine, owner: str, instance_ids: Collection[int], lease_s: float
) -> set[int]:
    """Extend ``owner``'s leases on ``instance_ids``; returns the ids it still holds."""
    if not instance_ids:
        return set()
    with engine.begin() as conn:
        rows = conn.execute(
            update(Instance)
            .where(
                Instance.id.in_(sorted(instance_ids)),
                Instance.lease_owner == owner,
                Instance.status == InstanceStatus.PROCESSING,
            )
            .values(lease_expires_at=func.now() + _seconds(lease_s))
            .returning(Instance.id)
        ).all()
    return {r.id for r in rows}


def mark_decoded(engine: Engine, instance_id: int, owner: str) -> None:
    """The file decoded without killing its worker: this claim no longer counts as an
    attempt. What is left in ``attempts`` are the times a worker died while reading or
    decoding this very file, so an OOM kill does not count against the batch-mates it
    took down with it (they were decoded already)."""
    with engine.begin() as conn:
        conn.execute(
            update(Instance)
            .where(Instance.id == instance_id, Instance.lease_owner == owner)
            .values(attempts=func.greatest(Instance.attempts - 1, 0))
        )


def release_claim(engine: Engine, instance_id: int, owner: str, *, counted: bool = True) -> bool:
    """Give a claim back cleanly (a transient error; the job will be retried): the row
    is queued again and the claim does not count as an attempt (``counted``: it still
    does, i.e. :func:`mark_decoded` has not taken it off yet). False when ``owner`` no
    longer held it."""
    with engine.begin() as conn:
        released = conn.execute(
            update(Instance)
            .where(
                Instance.id == instance_id,
                Instance.lease_owner == owner,
                Instance.status == InstanceStatus.PROCESSING,
            )
            .values(
                status=InstanceStatus.QUEUED,
                attempts=func.greatest(Instance.attempts - int(counted), 0),
                enqueued_at=func.now(),
                updated_at=func.now(),
                **_NO_LEASE,
            )
            .returning(Instance.id)
        ).scalar_one_or_none()
    return released is not None


def _take(
    engine: Engine, where: list[ColumnElement[bool]], values: dict[str, Any], limit: int
) -> list[PendingJob]:
    """Stamp ``values`` on at most ``limit`` rows matching ``where`` that no other
    transaction holds (``FOR UPDATE SKIP LOCKED``); return them."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(Instance)
            .where(
                Instance.id.in_(
                    select(Instance.id)
                    .where(*where)
                    .order_by(Instance.received_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            .values(**values)
            .returning(Instance.id, Instance.sop_instance_uid, Instance.storage_uri, Instance.lane)
        ).all()
    return [PendingJob(r.id, r.sop_instance_uid, r.storage_uri, r.lane) for r in rows]


def take_unenqueued(engine: Engine, older_than_s: float, limit: int = 500) -> list[PendingJob]:
    """``received`` rows older than the grace period (committed, never enqueued), not
    stamped by another pass within it. The caller publishes, then :func:`mark_enqueued`."""
    return _take(
        engine,
        [
            Instance.status == InstanceStatus.RECEIVED,
            Instance.received_at < _ago(older_than_s),
            or_(Instance.enqueued_at.is_(None), Instance.enqueued_at < _ago(older_than_s)),
        ],
        {"enqueued_at": func.now()},
        limit,
    )


def take_orphaned_queued(
    engine: Engine,
    older_than_s: float,
    waiting_ids: Collection[int],
    unacked_ids: Collection[int] = (),
    unacked_older_than_s: float = 0.0,
    limit: int = 500,
) -> list[PendingJob]:
    """``queued`` rows whose job is not on the broker: none waiting (``waiting_ids``) and
    none delivered (``unacked_ids``) after ``older_than_s`` since they were enqueued, or
    only a delivered one after ``unacked_older_than_s`` (a retry's countdown is over: the
    worker holding it died). The broker lost the job (Redis restarted empty), it was
    acknowledged without a final status (the database was down), or a dead worker had
    reserved it without claiming it yet."""
    enqueued = func.coalesce(Instance.enqueued_at, Instance.received_at)
    return _take(
        engine,
        [
            Instance.status == InstanceStatus.QUEUED,
            Instance.id.not_in(sorted(waiting_ids)),
            or_(
                and_(Instance.id.not_in(sorted(unacked_ids)), enqueued < _ago(older_than_s)),
                enqueued < _ago(max(older_than_s, unacked_older_than_s)),
            ),
        ],
        {"enqueued_at": func.now(), "updated_at": func.now()},
        limit,
    )


def take_expired_leases(
    engine: Engine, stale_processing_s: float, limit: int = 500
) -> list[PendingJob]:
    """``processing`` rows whose lease expired (the worker died or lost the database),
    or, with no lease, untouched for ``stale_processing_s``; they go back to ``queued``
    (their unfinished claim stays counted in ``attempts``)."""
    return _take(
        engine,
        [
            Instance.status == InstanceStatus.PROCESSING,
            or_(
                Instance.lease_expires_at < func.now(),
                and_(
                    Instance.lease_expires_at.is_(None),
                    Instance.updated_at < _ago(stale_processing_s),
                ),
            ),
        ],
        {
            "status": InstanceStatus.QUEUED,
            "enqueued_at": func.now(),
            "updated_at": func.now(),
            **_NO_LEASE,
        },
        limit,
    )


@dataclass(frozen=True)
class RequeueCandidate:
    instance_id: int
    sop_instance_uid: str
    study_instance_uid: str
    status: InstanceStatus
    reason: str | None


def requeue_candidates(
    engine: Engine, *, failed: bool, study_instance_uid: str | None
) -> list[RequeueCandidate]:
    """What ``cxr-triage requeue`` would put back in work: ``failed`` instances (all of
    them with ``failed``; a study's with ``study_instance_uid``) and, of that study,
    also those still pending without a live lease. Done and not eligible ones never."""
    pending_free = and_(
        Instance.status.in_(PENDING_STATUSES),
        or_(Instance.lease_expires_at.is_(None), Instance.lease_expires_at < func.now()),
    )
    where: list[ColumnElement[bool]] = []
    if study_instance_uid is not None:
        where.append(Study.study_instance_uid == study_instance_uid)
        where.append(
            or_(Instance.status == InstanceStatus.FAILED, pending_free)
            if not failed
            else Instance.status == InstanceStatus.FAILED
        )
    elif failed:
        where.append(Instance.status == InstanceStatus.FAILED)
    else:
        raise ValueError("name a study, or ask for every failed instance")
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                Instance.id,
                Instance.sop_instance_uid,
                Study.study_instance_uid,
                Instance.status,
                Instance.reason,
            )
            .join(Study, Study.id == Instance.study_id)
            .where(*where)
            .order_by(Instance.received_at)
        ).all()
    return [
        RequeueCandidate(r.id, r.sop_instance_uid, r.study_instance_uid, r.status, r.reason)
        for r in rows
    ]


def reset_for_requeue(engine: Engine, instance_ids: Collection[int]) -> list[PendingJob]:
    """Put instances back to ``queued`` with no reason, no lease and 0 attempts (an
    operator decided to try again); never a ``done`` one. The caller publishes."""
    if not instance_ids:
        return []
    with engine.begin() as conn:
        rows = conn.execute(
            update(Instance)
            .where(
                Instance.id.in_(sorted(instance_ids)),
                Instance.status.in_((*PENDING_STATUSES, InstanceStatus.FAILED)),
                or_(Instance.lease_expires_at.is_(None), Instance.lease_expires_at < func.now()),
            )
            .values(
                status=InstanceStatus.QUEUED,
                reason=None,
                attempts=0,
                enqueued_at=func.now(),
                updated_at=func.now(),
                **_NO_LEASE,
            )
            .returning(Instance.id, Instance.sop_instance_uid, Instance.storage_uri, Instance.lane)
        ).all()
    return [PendingJob(r.id, r.sop_instance_uid, r.storage_uri, r.lane) for r in rows]


# ---------------------------------------------------------------------------------------
# Same SOP Instance UID, different content (issue 12 defect 4; owned by the listener side)


class ContentMatch(enum.StrEnum):
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


@dataclass(frozen=True)
class PatientMismatch:
    """:func:`record_instance_checked` found the study recorded for another patient:
    nothing was written (the transaction rolled back, ``place_file`` never ran)."""

    study_id: int
    stored_patient_identity: dict[str, Any]


class _Mismatch(Exception):
    """Internal: roll the transaction back, report :class:`PatientMismatch`."""

    def __init__(self, mismatch: PatientMismatch) -> None:
        super().__init__("patient mismatch")
        self.mismatch = mismatch


def record_instance_checked(
    engine: Engine,
    rec: InstanceRecord,
    place_file: Callable[[], None],
    same_patient: Callable[[dict[str, Any]], bool] | None = None,
) -> CheckedRecord | PatientMismatch:
    """Record ``rec`` unless its SOP Instance UID is already recorded; compare contents.

    One transaction under a transaction-scoped advisory lock on the SOP Instance UID, so
    two listeners (or associations) receiving the same UID at once are serialised: the
    first runs ``place_file`` (moves the file into storage) and inserts the rows; every
    later one finds the row and gets SAME, DIFFERENT or UNKNOWN without writing anything
    (no file replaced, no study row created). ``place_file`` raising, or the commit
    failing, rolls the rows back; the caller removes a placed file then.

    A new SOP Instance UID first claims its study row (``INSERT … ON CONFLICT``: the
    study's first instance fixes ``patient_identity``; concurrent first instances of one
    study are serialised on that row). When the study already names a patient and
    ``same_patient(stored)`` is False, nothing is written and :class:`PatientMismatch`
    is returned, before ``place_file`` runs.
    """
    try:
        return _record_checked(engine, rec, place_file, same_patient)
    except _Mismatch as mismatch:
        return mismatch.mismatch


def _record_checked(
    engine: Engine,
    rec: InstanceRecord,
    place_file: Callable[[], None],
    same_patient: Callable[[dict[str, Any]], bool] | None,
) -> CheckedRecord:
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
            study_id, stored = _upsert_study(conn, rec)
            if stored is not None and same_patient is not None and not same_patient(stored):
                raise _Mismatch(PatientMismatch(study_id, stored))
            place_file()
            created = _insert_instance(conn, rec, study_id)
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
