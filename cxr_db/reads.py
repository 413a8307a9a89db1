"""Every read the worklist, the CLI and the JSON API make, as small functions over an Engine.

Studies are read through one query (``_studies``): the worklist is all of them in triage
order, a study page is one of them plus its instances. A study's status is
``statuses.study_status_of`` over its instances, and the reasons of its failed and
not-eligible instances come back as data (``StatusReason``), never as text to parse;
presentation formats them. Writes live in ``cxr_db.repository``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by

from cxr_common.population import study_population
from cxr_db.schema import Instance, Prediction, Study
from cxr_db.statuses import (
    REASON_STATUSES,
    InstanceStatus,
    StatusReason,
    study_status_of,
)

ACTIVE_ROLE = "active"
"""Predictions of shadow models (``model_role = 'shadow'``) are kept out of every read here."""


@dataclass(frozen=True)
class WorklistEntry:
    """One study as the worklist shows it."""

    study_instance_uid: str
    accession_number: str | None
    status: InstanceStatus
    reasons: tuple[StatusReason, ...]
    """Distinct reasons of the study's failed and not-eligible instances, failed first."""
    score: float | None
    flagged: bool
    model_version: str | None
    received_at: datetime
    scored_at: datetime | None
    instances: int
    heatmap_sop_instance_uids: tuple[str, ...]
    """Instances with a heatmap, highest probability first."""
    population: str | None = None
    """``cxr_common.population.study_population`` over the scored instances (None: none)."""
    population_reason: str | None = None
    """The reason of an instance with that population (the check's words, for staff)."""
    shadow_score: float | None = None
    """Highest score of the active model that may not triage (outside the population):
    shown greyed, never used for order or flag."""


@dataclass(frozen=True)
class InstanceDetail:
    """One instance of a study with its newest prediction, if it was scored."""

    sop_instance_uid: str
    status: InstanceStatus
    reason: str | None
    view_position: str | None
    received_at: datetime
    probability: float | None
    threshold: float | None
    flagged: bool | None
    model_version: str | None
    scored_at: datetime | None
    has_heatmap: bool
    population: str | None = None
    population_reason: str | None = None
    triage: bool | None = None
    """False: the score is shown in shadow (outside the validated population)."""

    @property
    def reasons(self) -> tuple[StatusReason, ...]:
        """This instance's reason in the shape a study's reasons have."""
        if self.status in REASON_STATUSES:
            return (StatusReason(self.status, self.reason),)
        return ()


@dataclass(frozen=True)
class StudyDetail:
    """One study (as on the worklist) and its instances, highest probability first."""

    study: WorklistEntry
    instances: tuple[InstanceDetail, ...]


def _studies() -> Select[Any]:
    """Every study with its roll-up of instances and predictions, in worklist order:
    flagged first; then unscored studies (pending, failed, not eligible: they still need
    a human read) and scored ones by score; then arrival."""
    reason_order = (Instance.status, Instance.reason)
    has_reason = Instance.status.in_(REASON_STATUSES)
    agg = (
        select(
            Instance.study_id,
            func.count().label("instances"),
            study_status_of(Instance.status).label("status"),
            func.array_agg(aggregate_order_by(Instance.status, *reason_order))
            .filter(has_reason)
            .label("reason_statuses"),
            func.array_agg(aggregate_order_by(Instance.reason, *reason_order))
            .filter(has_reason)
            .label("reason_texts"),
            *_population_columns(),
        )
        .group_by(Instance.study_id)
        .subquery("agg")
    )
    pred = (
        select(
            Instance.study_id,
            func.max(Prediction.created_at).label("scored_at"),
            func.array_agg(
                aggregate_order_by(Prediction.model_version, Prediction.created_at.desc())
            )[1].label("model_version"),
            func.array_agg(
                aggregate_order_by(Instance.sop_instance_uid, Prediction.probability.desc())
            )
            .filter(Prediction.heatmap_png.is_not(None))
            .label("heatmaps"),
            func.max(Prediction.probability)
            .filter(Prediction.triage.is_(False))
            .label("shadow_score"),
        )
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(Prediction.model_role == ACTIVE_ROLE)
        .group_by(Instance.study_id)
        .subquery("pred")
    )
    return (
        select(
            Study.id,
            Study.study_instance_uid,
            Study.accession_number,
            agg.c.status,
            agg.c.reason_statuses,
            agg.c.reason_texts,
            Study.score,
            Study.flagged,
            pred.c.model_version,
            Study.first_received_at.label("received_at"),
            pred.c.scored_at,
            agg.c.instances,
            pred.c.heatmaps,
            agg.c.populations,
            agg.c.population_reasons,
            pred.c.shadow_score,
        )
        .join(agg, agg.c.study_id == Study.id)
        .outerjoin(pred, pred.c.study_id == Study.id)
        .order_by(
            Study.flagged.desc(),
            Study.score.desc().nulls_first(),
            Study.first_received_at.asc(),
            Study.id.asc(),
        )
    )


def _reasons(
    statuses: Sequence[str] | None, texts: Sequence[str | None] | None
) -> tuple[StatusReason, ...]:
    pairs = zip(statuses or (), texts or (), strict=True)
    return tuple(dict.fromkeys(StatusReason(InstanceStatus(s), r) for s, r in pairs))


def _population_columns() -> tuple[Any, Any]:
    """A study's scored instances' populations and reasons, as two arrays in one order."""
    assessed = Instance.population.is_not(None)
    return (
        func.array_agg(aggregate_order_by(Instance.population, Instance.id))
        .filter(assessed)
        .label("populations"),
        func.array_agg(aggregate_order_by(Instance.population_reason, Instance.id))
        .filter(assessed)
        .label("population_reasons"),
    )


def _study_population(
    populations: Sequence[str] | None, reasons: Sequence[str | None] | None
) -> tuple[str | None, str | None]:
    pairs = list(zip(populations or (), reasons or (), strict=True))
    status = study_population(p for p, _ in pairs)
    if status is None:
        return None, None
    return status.value, next((r for p, r in pairs if p == status.value), None)


def _entry(r: Row[Any]) -> WorklistEntry:
    population, population_reason = _study_population(r.populations, r.population_reasons)
    return WorklistEntry(
        study_instance_uid=r.study_instance_uid,
        accession_number=r.accession_number,
        status=r.status,
        reasons=_reasons(r.reason_statuses, r.reason_texts),
        score=r.score,
        flagged=r.flagged,
        model_version=r.model_version,
        received_at=r.received_at,
        scored_at=r.scored_at,
        instances=r.instances,
        heatmap_sop_instance_uids=tuple(r.heatmaps or ()),
        population=population,
        population_reason=population_reason,
        shadow_score=r.shadow_score,
    )


def worklist(engine: Engine, limit: int = 1000) -> list[WorklistEntry]:
    """The triaged worklist, at most ``limit`` studies (see ``_studies`` for the order)."""
    with engine.begin() as conn:
        rows = conn.execute(_studies().limit(limit)).all()
    return [_entry(r) for r in rows]


def _instances(conn: Connection, study_id: int) -> tuple[InstanceDetail, ...]:
    latest = (
        select(
            Prediction.probability,
            Prediction.threshold,
            Prediction.flagged,
            Prediction.model_version,
            Prediction.created_at,
            Prediction.heatmap_png.is_not(None).label("has_heatmap"),
            Prediction.triage,
        )
        .where(Prediction.instance_id == Instance.id, Prediction.model_role == ACTIVE_ROLE)
        .order_by(Prediction.created_at.desc())
        .limit(1)
        .lateral("p")
    )
    rows = conn.execute(
        select(
            Instance.sop_instance_uid,
            Instance.status,
            Instance.reason,
            Instance.view_position,
            Instance.received_at,
            latest.c.probability,
            latest.c.threshold,
            latest.c.flagged,
            latest.c.model_version,
            latest.c.created_at.label("scored_at"),
            latest.c.has_heatmap,
            Instance.population,
            Instance.population_reason,
            latest.c.triage,
        )
        .outerjoin(latest, true())
        .where(Instance.study_id == study_id)
        .order_by(latest.c.probability.desc().nulls_last(), Instance.received_at.asc(), Instance.id)
    ).all()
    return tuple(
        InstanceDetail(
            sop_instance_uid=r.sop_instance_uid,
            status=r.status,
            reason=r.reason,
            view_position=r.view_position,
            received_at=r.received_at,
            probability=r.probability,
            threshold=r.threshold,
            flagged=r.flagged,
            model_version=r.model_version,
            scored_at=r.scored_at,
            has_heatmap=bool(r.has_heatmap),
            population=r.population,
            population_reason=r.population_reason,
            triage=r.triage,
        )
        for r in rows
    )


def study_detail(engine: Engine, study_instance_uid: str) -> StudyDetail | None:
    """One study and its instances (highest probability first), or None if unknown."""
    with engine.begin() as conn:
        row = conn.execute(
            _studies().where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        if row is None:
            return None
        return StudyDetail(study=_entry(row), instances=_instances(conn, row.id))


def heatmap_png(engine: Engine, sop_instance_uid: str) -> bytes | None:
    """The newest heatmap PNG of one instance, if it was scored."""
    with engine.begin() as conn:
        return conn.execute(
            select(Prediction.heatmap_png)
            .join(Instance, Instance.id == Prediction.instance_id)
            .where(
                Instance.sop_instance_uid == sop_instance_uid, Prediction.model_role == ACTIVE_ROLE
            )
            .order_by(Prediction.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()


def instance_statuses(engine: Engine) -> dict[str, InstanceStatus]:
    """sop_instance_uid → status, for tests and progress displays."""
    with engine.begin() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.status)).all()
    return {r.sop_instance_uid: r.status for r in rows}


def database_answers(engine: Engine) -> None:
    """Run ``SELECT 1``; raises the driver's error when the database does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
