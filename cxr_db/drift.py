"""Drift of the active model, per UTC day or over the last 24 hours (``cxr_common.drift``).

The reference is the one registered with the active model (``models.reference``); a day's
PSI is ``None`` when the day holds fewer than ``min_count`` values (a PSI over a handful of
studies is noise). :func:`current_psi` is what a metrics endpoint exposes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Float

from cxr_common.drift import PSI_WARN, DriftReference
from cxr_db.instances.statuses import FINAL_STATUSES, InstanceStatus
from cxr_db.instances.tables import Instance, Prediction
from cxr_db.registry.store import ModelEntry, active_model

__all__ = ["DriftDay", "DriftReport", "current_drift", "current_psi", "daily_drift"]

MIN_COUNT = 30
_ELIGIBILITY_OF = {
    InstanceStatus.DONE: "scored",
    InstanceStatus.NOT_ELIGIBLE: "not_eligible",
    InstanceStatus.FAILED: "failed",
}


@dataclass(frozen=True)
class DriftDay:
    """One window (a UTC day, or the last 24 hours) against the reference."""

    start: datetime
    end: datetime
    n_scored: int
    n_final: int
    score_psi: float | None
    eligibility_psi: float | None
    population_psi: float | None

    @property
    def day(self) -> date:
        return self.start.astimezone(UTC).date()

    def alerts(self, threshold: float = PSI_WARN) -> list[str]:
        """The measures at or above ``threshold``: ``score``, ``eligibility``, ``population``."""
        named = (
            ("score", self.score_psi),
            ("eligibility", self.eligibility_psi),
            ("population", self.population_psi),
        )
        return [name for name, value in named if value is not None and value >= threshold]

    def as_json(self) -> dict[str, object]:
        return {
            "day": self.day.isoformat(),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "n_scored": self.n_scored,
            "n_final": self.n_final,
            "score_psi": self.score_psi,
            "eligibility_psi": self.eligibility_psi,
            "population_psi": self.population_psi,
            "alerts": self.alerts(),
        }


@dataclass(frozen=True)
class DriftReport:
    """Drift of the active model, or why it cannot be measured (``problem``)."""

    model_version: str | None
    reference_source: str | None
    problem: str | None
    windows: tuple[DriftDay, ...] = ()


def _reference(model: ModelEntry | None) -> tuple[DriftReference | None, str | None]:
    if model is None:
        return None, "no active model is registered"
    if model.reference is None:
        return None, (
            f"model {model.version} has no drift reference (register it with --reference, "
            "e.g. the drift_reference.json that cxr-triage validate writes)"
        )
    try:
        ref = DriftReference.from_json(model.reference)
    except ValueError as exc:
        return None, f"model {model.version}: {exc}"
    if ref.model_sha256 != model.sha256:
        return None, f"the drift reference of model {model.version} is for another model"
    return ref, None


def _counts(conn: Connection, stmt: object) -> dict[str, int]:
    return {str(k): int(n) for k, n in conn.execute(stmt).all()}  # type: ignore[call-overload]


def _window(
    conn: Connection,
    ref: DriftReference,
    model: ModelEntry,
    start: datetime,
    end: datetime,
    min_count: int,
) -> DriftDay:
    in_window = (Prediction.created_at >= start, Prediction.created_at < end)
    scored = (
        Prediction.model_role == "active",
        Prediction.triage.is_(True),
        Prediction.model_version == model.version,
        *in_window,
    )
    bucket: ColumnElement[int]
    if ref.score_edges:
        bucket = func.width_bucket(
            Prediction.probability, literal(list(ref.score_edges), ARRAY(Float))
        )
    else:
        bucket = literal(0)
    by_bin = _counts(conn, select(bucket, func.count()).where(*scored).group_by(bucket))
    bins = [by_bin.get(str(i), 0) for i in range(len(ref.score_edges) + 1)]
    final = (
        Instance.status.in_(FINAL_STATUSES),
        Instance.updated_at >= start,
        Instance.updated_at < end,
    )
    statuses = _counts(
        conn, select(Instance.status, func.count()).where(*final).group_by(Instance.status)
    )
    eligibility = {_ELIGIBILITY_OF[InstanceStatus(s)]: n for s, n in statuses.items() if n}
    populations = _counts(
        conn,
        select(Instance.population, func.count())
        .where(*final, Instance.status == InstanceStatus.DONE, Instance.population.is_not(None))
        .group_by(Instance.population),
    )
    n_scored, n_final, n_pop = sum(bins), sum(eligibility.values()), sum(populations.values())
    return DriftDay(
        start=start,
        end=end,
        n_scored=n_scored,
        n_final=n_final,
        score_psi=ref.score_psi(bins) if n_scored >= min_count else None,
        eligibility_psi=ref.eligibility_psi(eligibility) if n_final >= min_count else None,
        population_psi=ref.population_psi(populations) if n_pop >= min_count else None,
    )


def _report(
    engine: Engine, windows: list[tuple[datetime, datetime]], min_count: int
) -> DriftReport:
    model = active_model(engine)
    ref, problem = _reference(model)
    if ref is None or model is None:
        return DriftReport(model.version if model else None, None, problem)
    with engine.connect() as conn:
        days = tuple(_window(conn, ref, model, s, e, min_count) for s, e in windows)
    return DriftReport(model.version, ref.source, None, days)


def daily_drift(
    engine: Engine, days: int = 7, min_count: int = MIN_COUNT, now: datetime | None = None
) -> DriftReport:
    """One window per UTC day, the last ``days`` days (today included), oldest first."""
    now = now or datetime.now(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    starts = [today - timedelta(days=k) for k in range(days - 1, -1, -1)]
    return _report(engine, [(s, s + timedelta(days=1)) for s in starts], min_count)


def current_drift(
    engine: Engine, hours: float = 24, min_count: int = MIN_COUNT, now: datetime | None = None
) -> DriftReport:
    """One window: the last ``hours`` hours."""
    now = now or datetime.now(UTC)
    return _report(engine, [(now - timedelta(hours=hours), now)], min_count)


def current_psi(engine: Engine, min_count: int = MIN_COUNT) -> Mapping[str, float | None]:
    """PSI of the last 24 hours by measure (``score``, ``eligibility``, ``population``);
    ``None`` where there is no reference or too little data. For a metrics endpoint."""
    report = current_drift(engine, min_count=min_count)
    window = report.windows[0] if report.windows else None
    return {
        "score": window.score_psi if window else None,
        "eligibility": window.eligibility_psi if window else None,
        "population": window.population_psi if window else None,
    }
