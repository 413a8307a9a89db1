"""Results back to PACS in the database: study completeness, what a result is made of, and
every send attempt. Small functions over an Engine (or a Connection where the caller holds
a lock); states in :mod:`cxr_db.results.states`, the table in :mod:`cxr_db.results.tables`.

Completeness is decided here, by Postgres: :func:`complete_quiet_studies` moves studies
that had no new instance for the quiet period and have no pending instance from
``receiving`` to ``complete`` with one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED) RETURNING``, so several listener processes never complete (or enqueue) the
same study twice. A late instance reopens the study (the 0005 insert trigger).

Sending is idempotent per (study, result version, destination): the sender holds
:func:`send_lock` (a transaction-scoped advisory lock) while it checks
:func:`already_sent`, sends, and :func:`record_attempt`; a partial unique index refuses a
second ``sent`` row as the last line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import distinct_on

from cxr_db import sends
from cxr_db.hl7.store import Hl7Outcome, newest_attempts
from cxr_db.instances.statuses import PENDING_STATUSES, InstanceStatus
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.registry.tables import ModelRole
from cxr_db.results.states import ResultState, SendStatus
from cxr_db.results.tables import ResultSend

__all__ = [
    "Attempt",
    "CompletedStudy",
    "ResultInputs",
    "ScoredInstance",
    "SeenInstance",
    "DestinationOutcome",
    "StudyResults",
    "already_sent",
    "complete_quiet_studies",
    "last_sent_version",
    "mark_results_enqueued",
    "record_attempt",
    "result_inputs",
    "send_lock",
    "set_result_state",
    "sent_destinations",
    "study_results",
    "unenqueued_complete_studies",
]


@dataclass(frozen=True)
class CompletedStudy:
    """A study that became (or is) complete: what its results job needs."""

    study_id: int
    study_instance_uid: str
    result_version: int


def _older_than(seconds: float) -> ColumnElement[Any]:
    """``now() - seconds``, computed by Postgres (one clock for every process)."""
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def complete_quiet_studies(
    engine: Engine, quiet_s: float, limit: int = 500
) -> list[CompletedStudy]:
    """``receiving`` → ``complete`` for studies with no instance for ``quiet_s`` seconds
    and none pending (received, queued, processing). Returns the studies it moved; a row
    another process holds is skipped (SKIP LOCKED), never moved twice."""
    pending = exists().where(Instance.study_id == Study.id, Instance.status.in_(PENDING_STATUSES))
    with engine.begin() as conn:
        rows = conn.execute(
            update(Study)
            .where(
                Study.id.in_(
                    select(Study.id)
                    .where(
                        Study.result_state == ResultState.RECEIVING,
                        Study.last_instance_at < _older_than(quiet_s),
                        ~pending,
                    )
                    .order_by(Study.last_instance_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ),
                # re-checked on the locked row: an instance may have arrived meanwhile
                Study.result_state == ResultState.RECEIVING,
            )
            .values(result_state=ResultState.COMPLETE, completed_at=func.now())
            .returning(Study.id, Study.study_instance_uid, Study.result_version)
        ).all()
    return [CompletedStudy(r.id, r.study_instance_uid, r.result_version) for r in rows]


def mark_results_enqueued(engine: Engine, study: CompletedStudy) -> None:
    """Note that the results job of ``study``'s version is on the broker."""
    with engine.begin() as conn:
        conn.execute(
            update(Study)
            .where(Study.id == study.study_id, Study.result_version == study.result_version)
            .values(results_enqueued_at=func.now())
        )


def unenqueued_complete_studies(
    engine: Engine, older_than_s: float, limit: int = 500
) -> list[CompletedStudy]:
    """Complete studies whose results job was never enqueued (the broker was down, or the
    listener died between completing and enqueueing). Their ``completed_at`` is touched
    so that one pass of one listener picks each of them up once."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(Study)
            .where(
                Study.id.in_(
                    select(Study.id)
                    .where(
                        Study.result_state == ResultState.COMPLETE,
                        Study.results_enqueued_at.is_(None),
                        Study.completed_at < _older_than(older_than_s),
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            .values(completed_at=func.now())
            .returning(Study.id, Study.study_instance_uid, Study.result_version)
        ).all()
    return [CompletedStudy(r.id, r.study_instance_uid, r.result_version) for r in rows]


# ------------------------------------------------------------------ what is sent


@dataclass(frozen=True)
class ScoredInstance:
    """The scored instance a study's result shows and its newest active-model prediction.

    ``triage`` False: the score was made in shadow (the instance is outside the validated
    population), it set no priority and ``flagged`` is False; ``population`` and
    ``population_reason`` are the instance's check (``cxr_common.population``)."""

    sop_instance_uid: str
    storage_uri: str
    probability: float
    threshold: float
    flagged: bool
    model_name: str
    model_version: str
    weights_sha256: str
    calibration_version: str | None
    heatmap_png: bytes | None
    triage: bool = True
    population: str | None = None
    population_reason: str | None = None
    score_lower: float | None = None
    score_upper: float | None = None


@dataclass(frozen=True)
class SeenInstance:
    """An instance of the study as a not-analysed report lists it."""

    sop_instance_uid: str
    storage_uri: str
    status: InstanceStatus
    reason: str | None


@dataclass(frozen=True)
class ResultInputs:
    """Everything the results task reads about one study (no patient data: that stays in
    the stored DICOM headers)."""

    study_id: int
    study_instance_uid: str
    result_state: ResultState
    result_version: int
    study_score: float | None
    study_flagged: bool
    best: ScoredInstance | None
    instances: tuple[SeenInstance, ...]
    scored: tuple[ScoredInstance, ...] = ()
    """Every scored instance, ``best`` first (one SR measurement group each)."""


def result_inputs(engine: Engine, study_id: int) -> ResultInputs | None:
    """The study, its best scored instance, every scored instance and all its instances;
    None when the study is unknown.

    Only the **active** model's predictions count (``predictions.model_role = 'active'``):
    a shadow model's score never reaches PACS. Of each instance its newest such prediction;
    the best instance is the highest score among those that triaged, else (every scored
    instance outside the validated population) the highest shadow score, which the
    objects then present as such."""
    with engine.begin() as conn:
        study = conn.execute(
            select(
                Study.id,
                Study.study_instance_uid,
                Study.result_state,
                Study.result_version,
                Study.score,
                Study.flagged,
            ).where(Study.id == study_id)
        ).one_or_none()
        if study is None:
            return None
        newest = (
            select(Prediction)
            .where(
                Prediction.instance_id == Instance.id,
                Prediction.model_role == ModelRole.ACTIVE.value,
            )
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(1)
            .lateral("p")
        )
        best = conn.execute(
            select(
                Instance.sop_instance_uid,
                Instance.storage_uri,
                newest.c.probability,
                newest.c.threshold,
                newest.c.flagged,
                newest.c.model_name,
                newest.c.model_version,
                newest.c.weights_sha256,
                newest.c.calibration_version,
                newest.c.heatmap_png,
                newest.c.triage,
                Instance.population,
                Instance.population_reason,
                newest.c.score_lower,
                newest.c.score_upper,
            )
            .join(newest, Instance.id == newest.c.instance_id)
            .where(Instance.study_id == study_id, Instance.status == InstanceStatus.DONE)
            .order_by(newest.c.triage.desc(), newest.c.probability.desc(), Instance.id)
        ).all()
        seen = conn.execute(
            select(
                Instance.sop_instance_uid, Instance.storage_uri, Instance.status, Instance.reason
            )
            .where(Instance.study_id == study_id)
            .order_by(Instance.received_at, Instance.id)
        ).all()
    return ResultInputs(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        result_state=study.result_state,
        result_version=study.result_version,
        study_score=study.score,
        study_flagged=study.flagged,
        best=ScoredInstance(**best[0]._asdict()) if best else None,
        instances=tuple(SeenInstance(**r._asdict()) for r in seen),
        scored=tuple(ScoredInstance(**r._asdict()) for r in best),
    )


# ------------------------------------------------------------------ sends


@contextmanager
def send_lock(
    engine: Engine, study_id: int, result_version: int, destination: str
) -> Iterator[Connection | None]:
    """The advisory lock of (study, version, destination) (``cxr_db.sends``): None when
    another process holds it (it is sending that very result now)."""
    with sends.send_lock(engine, "cxr-results", study_id, result_version, destination) as conn:
        yield conn


def already_sent(conn: Connection, study_id: int, result_version: int, destination: str) -> bool:
    """True when this result version was stored on ``destination`` already."""
    return sends.delivered(conn, ResultSend, SendStatus.SENT, study_id, result_version, destination)


def last_sent_version(
    conn: Connection, study_id: int, destination: str, before_version: int
) -> int | None:
    """The newest result version below ``before_version`` stored on ``destination``."""
    return sends.last_delivered_version(
        conn, ResultSend, SendStatus.SENT, study_id, destination, before_version
    )


@dataclass(frozen=True)
class Attempt:
    """One send attempt as the results task records it."""

    study_id: int
    result_version: int
    destination: str
    status: SendStatus
    sc_sop_instance_uid: str | None
    sr_sop_instance_uid: str
    sc_status: int | None
    sr_status: int | None
    error: str | None
    seg_sop_instance_uid: str | None = None
    seg_status: int | None = None


def record_attempt(conn: Connection, attempt: Attempt) -> int:
    """Insert the attempt (numbered 1, 2, ... per study, version and destination);
    returns its number."""
    number = sends.next_attempt(
        conn, ResultSend, attempt.study_id, attempt.result_version, attempt.destination
    )
    conn.execute(
        insert(ResultSend).values(
            study_id=attempt.study_id,
            result_version=attempt.result_version,
            destination=attempt.destination,
            attempt=number,
            status=attempt.status,
            sc_sop_instance_uid=attempt.sc_sop_instance_uid,
            sr_sop_instance_uid=attempt.sr_sop_instance_uid,
            sc_status=attempt.sc_status,
            sr_status=attempt.sr_status,
            seg_sop_instance_uid=attempt.seg_sop_instance_uid,
            seg_status=attempt.seg_status,
            error=None if attempt.error is None else attempt.error[:2000],
        )
    )
    return int(number)


def sent_destinations(engine: Engine, study_id: int, result_version: int) -> set[str]:
    """The destinations that stored this result version."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(ResultSend.destination).where(
                ResultSend.study_id == study_id,
                ResultSend.result_version == result_version,
                ResultSend.status == SendStatus.SENT,
            )
        ).all()
    return {r.destination for r in rows}


def set_result_state(
    engine: Engine, study_id: int, result_version: int, state: ResultState
) -> bool:
    """Set the state of a finished study's result version. A study that was reopened
    meanwhile (receiving, or a newer version) is left alone; returns whether it changed."""
    if state is ResultState.RECEIVING:
        raise ValueError("only the instances trigger reopens a study")
    finished: Sequence[ResultState] = (
        ResultState.COMPLETE,
        ResultState.RESULTS_SENT,
        ResultState.RESULTS_FAILED,
    )
    with engine.begin() as conn:
        done = conn.execute(
            update(Study)
            .where(
                and_(
                    Study.id == study_id,
                    Study.result_version == result_version,
                    Study.result_state.in_(finished),
                )
            )
            .values(result_state=state)
            .returning(Study.id)
        ).one_or_none()
    return done is not None


# ------------------------------------------------------------------ as pages show them


@dataclass(frozen=True)
class DestinationOutcome:
    """The newest send attempt of a study's results to one destination."""

    destination: str
    result_version: int
    attempt: int
    status: SendStatus
    at: datetime
    error: str | None
    sc_sop_instance_uid: str | None
    sr_sop_instance_uid: str
    sc_status: int | None
    sr_status: int | None
    seg_sop_instance_uid: str | None = None
    seg_status: int | None = None


@dataclass(frozen=True)
class StudyResults:
    """Where a study's results back to PACS stand (``cxr_db.results.states``)."""

    state: ResultState
    result_version: int
    destinations: tuple[DestinationOutcome, ...]
    """The newest attempt per destination, by destination."""
    hl7: tuple[Hl7Outcome, ...] = ()
    """The newest HL7 attempt per receiver (``cxr_db.hl7``), by receiver."""


def study_results(conn: Connection, study_ids: Sequence[int]) -> dict[int, StudyResults]:
    """study id → its result state, version and newest attempt per destination (DICOM
    and HL7)."""
    if not study_ids:
        return {}
    states = conn.execute(
        select(Study.id, Study.result_state, Study.result_version).where(Study.id.in_(study_ids))
    ).all()
    attempts = conn.execute(
        select(ResultSend)
        .where(ResultSend.study_id.in_(study_ids))
        .ext(distinct_on(ResultSend.study_id, ResultSend.destination))
        .order_by(ResultSend.study_id, ResultSend.destination, ResultSend.id.desc())
    ).all()
    by_study: dict[int, list[DestinationOutcome]] = {}
    for a in attempts:
        by_study.setdefault(a.study_id, []).append(
            DestinationOutcome(
                destination=a.destination,
                result_version=a.result_version,
                attempt=a.attempt,
                status=a.status,
                at=a.at,
                error=a.error,
                sc_sop_instance_uid=a.sc_sop_instance_uid,
                sr_sop_instance_uid=a.sr_sop_instance_uid,
                sc_status=a.sc_status,
                sr_status=a.sr_status,
                seg_sop_instance_uid=a.seg_sop_instance_uid,
                seg_status=a.seg_status,
            )
        )
    hl7 = newest_attempts(conn, study_ids)
    return {
        r.id: StudyResults(
            r.result_state,
            r.result_version,
            tuple(by_study.get(r.id, ())),
            tuple(hl7.get(r.id, ())),
        )
        for r in states
    }
