"""What a metrics scrape reads from the database, as plain reads (the prometheus-client
collector that serves them, with the broker's queue depths, is
``worklist.metrics_collector``; names and help in ``cxr_common.metrics``).

What each scrape costs (README "Metrics"), in one read-only REPEATABLE READ transaction
with a 5 s statement timeout (:func:`read_snapshot`):

* all-time counters: ``count(*) … GROUP BY status`` over ``instances`` (an index-only
  scan of ``ix_instances_status_received``), and, for failed and not-eligible rows only,
  a ``CASE`` that maps each reason to its category in SQL;
* histograms (decode, inference, turnaround, time to read): ordinary cumulative
  histograms over every row, aggregated into bucket counts in SQL (``count(*) FILTER
  (WHERE x <= bound)``), so ``histogram_quantile(0.95, rate(..._bucket[1h]))`` works;
  each scrape scans the scored instances' predictions (and the answered studies) once,
  which grows with the table: a few hundred ms per million predictions. A requeued
  instance's prediction leaving reads as a counter reset, which ``rate()`` tolerates.
* worker heartbeats: instances received in the last 24 h (``ix_instances_status_received``).
* time to read (``cxr_db.reading.stats``): the oldest flagged unread and unscored study;
* results to PACS: sends by outcome (``result_sends``), studies by result state, the
  ones enqueued and not yet sent and the age of the oldest;
* sign-in failures and lock-outs: ``count(*)`` of their audit actions
  (``ix_audit_log_action_at``), and the accounts locked now.
* the models: the registry's active and shadow models
  (:func:`cxr_db.registry.store.serving_model_labels`, a handful of rows), so an
  activation or a rollback shows at the next scrape, not when a process started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    select,
    text,
)

from cxr_common import metrics as m
from cxr_db.accounts.tables import SignInLock
from cxr_db.audit.tables import AuditAction, AuditEntry
from cxr_db.hl7.tables import Hl7Send
from cxr_db.instances.statuses import FINAL_STATUSES, PENDING_STATUSES, InstanceStatus
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.reading import stats as reading_stats
from cxr_db.registry.store import serving_model_labels
from cxr_db.results.states import ResultState, SendStatus
from cxr_db.results.tables import ResultSend

STATEMENT_TIMEOUT = "5s"

REASON_PATTERNS: dict[InstanceStatus, tuple[tuple[str, str], ...]] = {
    InstanceStatus.FAILED: m.FAILED_REASON_PATTERNS,
    InstanceStatus.NOT_ELIGIBLE: m.NOT_ELIGIBLE_REASON_PATTERNS,
}


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.5``, ``60.0``)."""
    return repr(float(bound))


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (``le`` bound → count), the total count and sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float

    def buckets(self) -> list[tuple[str, float]]:
        pairs = [(_le(b), float(c)) for b, c in zip(self.bounds, self.cumulative, strict=True)]
        return [*pairs, ("+Inf", float(self.count))]

    def bucket_of(self, value: float) -> str:
        """The smallest ``le`` bound that holds ``value`` (for tests and docs)."""
        return next((_le(b) for b in self.bounds if value <= b), "+Inf")


@dataclass(frozen=True)
class PipelineSnapshot:
    """Everything one scrape read from the database."""

    by_status: dict[InstanceStatus, int]
    reasons: dict[tuple[InstanceStatus, str], int]
    oldest_pending_age_s: float
    decode: Histogram
    inference: Histogram
    turnaround: Histogram
    models: tuple[tuple[str, str, str, str], ...]
    """(name, version, calibration version, role) of the active and shadow models."""
    worker_prediction_age_s: dict[str, float]
    worker_claim_age_s: dict[str, float]
    time_to_read: dict[bool, Histogram]
    """Answered studies by flagged, arrival → first answer."""
    flagged_unread_oldest_s: float
    unscored_oldest_s: float
    results: ResultsSnapshot
    sign_in_failures: int
    lockouts: int
    accounts_locked: int


@dataclass(frozen=True)
class ResultsSnapshot:
    """Results to PACS/RIS: send attempts by outcome, studies by result state, the studies
    enqueued and not yet sent (the results queue as the database sees it) and the age of
    the oldest of them since it completed."""

    sends: dict[SendStatus, int]
    studies: dict[ResultState, int]
    unsent: int
    oldest_unsent_s: float
    hl7_sends: dict[str, int] = field(default_factory=dict)
    """HL7 delivery attempts by status (``cxr_db.hl7.tables.Hl7SendStatus`` values)."""


def _seconds_ago(seconds: float) -> ColumnElement[Any]:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))


def _age_s(ts: ColumnElement[Any]) -> ColumnElement[float]:
    return cast(extract("epoch", func.now() - ts), Float)


def histogram_columns(value: ColumnElement[Any], bounds: Sequence[float]) -> list[Any]:
    """Aggregate columns: one cumulative count per bound, then count and sum."""
    columns: list[Any] = [func.count().filter(value <= bound) for bound in bounds]
    columns.append(func.count(value))
    columns.append(func.coalesce(func.sum(value), 0.0))
    return columns


def histogram_from_row(row: Sequence[Any], start: int, bounds: tuple[float, ...]) -> Histogram:
    n = len(bounds)
    cumulative = tuple(int(v) for v in row[start : start + n])
    return Histogram(bounds, cumulative, int(row[start + n]), float(row[start + n + 1]))


def _reason_category() -> ColumnElement[str]:
    """The reason category of a failed or not-eligible row, in SQL (first match wins)."""
    whens = [
        (and_(Instance.status == status, Instance.reason.ilike(pattern)), literal(category))
        for status, patterns in REASON_PATTERNS.items()
        for category, pattern in patterns
    ]
    return case(*whens, else_=literal(m.OTHER))


def _recently_scored(window_s: float) -> ColumnElement[bool]:
    """Scored instances received in the window (served by ix_instances_status_received)."""
    return and_(
        Instance.status == InstanceStatus.DONE, Instance.received_at >= _seconds_ago(window_s)
    )


def _scoring(conn: Connection) -> tuple[Histogram, Histogram]:
    rows = (
        select(
            (Prediction.decode_ms / 1000.0).label("decode"),
            (Prediction.inference_ms / 1000.0).label("inference"),
        )
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(Instance.status == InstanceStatus.DONE)
        .offset(0)  # each value once per row, not once per bucket filter
        .subquery("scored")
    )
    bounds = m.SCORING_BUCKETS_S
    row = conn.execute(
        select(
            *histogram_columns(rows.c.decode, bounds), *histogram_columns(rows.c.inference, bounds)
        )
    ).one()
    return histogram_from_row(row, 0, bounds), histogram_from_row(row, len(bounds) + 2, bounds)


def _turnaround(conn: Connection) -> Histogram:
    per_study = (
        select(
            func.max(Instance.received_at).label("last_received"),
            func.max(Prediction.created_at).label("scored_at"),
            func.bool_and(Instance.status.in_(FINAL_STATUSES)).label("all_final"),
        )
        .select_from(Instance)
        .outerjoin(Prediction, Prediction.instance_id == Instance.id)
        .group_by(Instance.study_id)
        .subquery("per_study")
    )
    # A study whose last instance arrived after its score was written waits 0 s.
    waits = (
        select(
            func.greatest(
                cast(extract("epoch", per_study.c.scored_at - per_study.c.last_received), Float),
                0.0,
            ).label("seconds")
        )
        .where(per_study.c.all_final, per_study.c.scored_at.is_not(None))
        .offset(0)
        .subquery("waits")
    )
    bounds = m.TURNAROUND_BUCKETS_S
    row = conn.execute(select(*histogram_columns(waits.c.seconds, bounds))).one()
    return histogram_from_row(row, 0, bounds)


def _time_to_read(conn: Connection) -> dict[bool, Histogram]:
    times, seconds = reading_stats.time_to_read_seconds()
    bounds = m.TIME_TO_READ_BUCKETS_S
    rows = {
        bool(r[0]): r
        for r in conn.execute(
            select(times.c.flagged, *histogram_columns(seconds, bounds)).group_by(times.c.flagged)
        )
    }
    empty = Histogram(bounds, tuple(0 for _ in bounds), 0, 0.0)
    return {
        flagged: histogram_from_row(rows[flagged], 1, bounds) if flagged in rows else empty
        for flagged in (True, False)
    }


def _results(conn: Connection) -> ResultsSnapshot:
    sends = {
        SendStatus(r[0]): int(r[1])
        for r in conn.execute(select(ResultSend.status, func.count()).group_by(ResultSend.status))
    }
    studies = {
        ResultState(r[0]): int(r[1])
        for r in conn.execute(select(Study.result_state, func.count()).group_by(Study.result_state))
    }
    unsent, oldest = conn.execute(
        select(func.count(), _age_s(func.min(Study.completed_at))).where(
            Study.result_state == ResultState.COMPLETE, Study.results_enqueued_at.is_not(None)
        )
    ).one()
    hl7_sends = {
        str(r[0]): int(r[1])
        for r in conn.execute(select(Hl7Send.status, func.count()).group_by(Hl7Send.status))
    }
    return ResultsSnapshot(sends, studies, int(unsent), max(float(oldest or 0.0), 0.0), hl7_sends)


def _audit_count(conn: Connection, action: AuditAction) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action.value)
        ).scalar_one()
    )


def _worker_claim_ages(conn: Connection) -> dict[str, float]:
    owner = getattr(Instance, "lease_owner", None)
    if owner is None:  # a schema without worker leases
        return {}
    rows = conn.execute(
        select(owner, _age_s(func.max(Instance.updated_at)))
        .where(Instance.status == InstanceStatus.PROCESSING, owner.is_not(None))
        .group_by(owner)
    ).all()
    return {str(r[0]): max(float(r[1]), 0.0) for r in rows}


def read_snapshot(engine: Engine, window_s: float = m.HISTOGRAM_WINDOW_S) -> PipelineSnapshot:
    """Read every database-backed number in one consistent snapshot."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.execute(text("SET TRANSACTION READ ONLY"))
            conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"))
            by_status = {
                InstanceStatus(r.status): int(r.n)
                for r in conn.execute(
                    select(Instance.status, func.count().label("n")).group_by(Instance.status)
                )
            }
            category = _reason_category().label("category")
            reasons = {
                (InstanceStatus(r.status), str(r.category)): int(r.n)
                for r in conn.execute(
                    select(Instance.status, category, func.count().label("n"))
                    .where(Instance.status.in_(tuple(REASON_PATTERNS)))
                    .group_by(Instance.status, category)
                )
            }
            oldest = conn.execute(
                select(_age_s(func.min(Instance.received_at))).where(
                    Instance.status.in_(PENDING_STATUSES)
                )
            ).scalar_one()
            decode, inference = _scoring(conn)
            turnaround = _turnaround(conn)
            time_to_read = _time_to_read(conn)
            flagged_unread, unscored = reading_stats.oldest_waiting(conn)
            results = _results(conn)
            failures = _audit_count(conn, AuditAction.SIGN_IN_FAILED)
            lockouts = _audit_count(conn, AuditAction.ACCOUNT_LOCKED)
            locked = conn.execute(
                select(func.count(func.distinct(SignInLock.user_id))).where(
                    SignInLock.locked_until > func.now()
                )
            ).scalar_one()
            models = serving_model_labels(conn)
            workers = conn.execute(
                select(Prediction.worker_id, _age_s(func.max(Prediction.created_at)))
                .join(Instance, Instance.id == Prediction.instance_id)
                .where(_recently_scored(window_s), Prediction.worker_id.is_not(None))
                .group_by(Prediction.worker_id)
            ).all()
            claims = _worker_claim_ages(conn)
    return PipelineSnapshot(
        by_status=by_status,
        reasons=reasons,
        oldest_pending_age_s=max(float(oldest or 0.0), 0.0),
        decode=decode,
        inference=inference,
        turnaround=turnaround,
        models=models,
        worker_prediction_age_s={str(w): max(float(age), 0.0) for w, age in workers},
        worker_claim_age_s=claims,
        time_to_read=time_to_read,
        flagged_unread_oldest_s=flagged_unread,
        unscored_oldest_s=unscored,
        results=results,
        sign_in_failures=failures,
        lockouts=lockouts,
        accounts_locked=int(locked),
    )
