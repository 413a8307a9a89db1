"""The write side, as small functions over an Engine: an instance is recorded, enqueued,
claimed for processing and made final (done, not eligible or failed).

Each function is one transaction. Writes are idempotent so that a redelivered job or a
resent instance never creates a second row. Reads live in ``cxr_db.reads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, func, select, update
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


@dataclass(frozen=True)
class PopulationNote:
    """The population check of an instance (``cxr_common.population``) and its reason."""

    population: str
    reason: str


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
    }
    if population is not None:
        instance_values |= {
            "population": population.population,
            "population_reason": population.reason[:2000],
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
