"""The pipeline as Postgres and Redis see it, computed at scrape time: a prometheus-client
collector for the web app's ``/metrics`` (names and help in ``cxr_common.metrics``).

What each scrape costs (README "Metrics"), in one read-only REPEATABLE READ transaction
with a 5 s statement timeout:

* all-time counters: ``count(*) … GROUP BY status`` over ``instances`` (an index-only
  scan of ``ix_instances_status_received``), and, for failed and not-eligible rows only,
  a ``CASE`` that maps each reason to its category in SQL;
* histograms (decode, inference, turnaround) and worker heartbeats: a window, not a
  running aggregate: instances received in the last 24 h, found through the same index
  (``status = 'done' AND received_at >= now() - 24 h``), joined to their predictions and
  aggregated into bucket counts in SQL (``count(*) FILTER (WHERE x <= bound)``). So they
  are *gauge* histograms: read ``histogram_quantile(0.95, cxr_turnaround_seconds_bucket)``
  directly, never through ``rate()``; a study received more than 24 h ago leaves them.
* the models: the registry's active and shadow models (``models``, a handful of rows), so
  an activation or a rollback shows at the next scrape, not when a process started;
* drift: :func:`cxr_db.drift.current_psi` (last 24 hours of predictions against the active
  model's reference), read after the snapshot in its own statements;
* queue depth: one Redis ``LLEN`` per queue name, with a 1 s socket timeout.

A database or broker that does not answer gives ``cxr_database_up 0`` or
``cxr_broker_up 0`` and leaves out what it would have told; the scrape itself succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
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
from sqlalchemy.exc import SQLAlchemyError

from cxr_common import metrics as m
from cxr_db import drift
from cxr_db.models import ModelState, RegisteredModel
from cxr_db.schema import Instance, Prediction
from cxr_db.statuses import FINAL_STATUSES, PENDING_STATUSES, InstanceStatus

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 1.0
STATEMENT_TIMEOUT = "5s"

_REASON_PATTERNS: dict[InstanceStatus, tuple[tuple[str, str], ...]] = {
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


def _seconds_ago(seconds: float) -> ColumnElement[Any]:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))


def _age_s(ts: ColumnElement[Any]) -> ColumnElement[float]:
    return cast(extract("epoch", func.now() - ts), Float)


def _histogram_columns(value: ColumnElement[Any], bounds: Sequence[float]) -> list[Any]:
    """Aggregate columns: one cumulative count per bound, then count and sum."""
    columns: list[Any] = [func.count().filter(value <= bound) for bound in bounds]
    columns.append(func.count(value))
    columns.append(func.coalesce(func.sum(value), 0.0))
    return columns


def _histogram(row: Sequence[Any], start: int, bounds: tuple[float, ...]) -> Histogram:
    n = len(bounds)
    cumulative = tuple(int(v) for v in row[start : start + n])
    return Histogram(bounds, cumulative, int(row[start + n]), float(row[start + n + 1]))


def _reason_category() -> ColumnElement[str]:
    """The reason category of a failed or not-eligible row, in SQL (first match wins)."""
    whens = [
        (and_(Instance.status == status, Instance.reason.ilike(pattern)), literal(category))
        for status, patterns in _REASON_PATTERNS.items()
        for category, pattern in patterns
    ]
    return case(*whens, else_=literal(m.OTHER))


def _recently_scored(window_s: float) -> ColumnElement[bool]:
    """Scored instances received in the window (served by ix_instances_status_received)."""
    return and_(
        Instance.status == InstanceStatus.DONE, Instance.received_at >= _seconds_ago(window_s)
    )


def _scoring(conn: Connection, window_s: float) -> tuple[Histogram, Histogram]:
    decode = Prediction.decode_ms / 1000.0
    inference = Prediction.inference_ms / 1000.0
    bounds = m.SCORING_BUCKETS_S
    row = conn.execute(
        select(*_histogram_columns(decode, bounds), *_histogram_columns(inference, bounds))
        .select_from(Prediction)
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(_recently_scored(window_s))
    ).one()
    return _histogram(row, 0, bounds), _histogram(row, len(bounds) + 2, bounds)


def _turnaround(conn: Connection, window_s: float) -> Histogram:
    recent = (
        select(Instance.study_id).where(_recently_scored(window_s)).distinct().subquery("recent")
    )
    per_study = (
        select(
            func.max(Instance.received_at).label("last_received"),
            func.max(Prediction.created_at).label("scored_at"),
            func.bool_and(Instance.status.in_(FINAL_STATUSES)).label("all_final"),
        )
        .select_from(Instance)
        .join(recent, recent.c.study_id == Instance.study_id)
        .outerjoin(Prediction, Prediction.instance_id == Instance.id)
        .group_by(Instance.study_id)
        .subquery("per_study")
    )
    # A study whose last instance arrived after its score was written waits 0 s.
    seconds = func.greatest(
        cast(extract("epoch", per_study.c.scored_at - per_study.c.last_received), Float), 0.0
    )
    bounds = m.TURNAROUND_BUCKETS_S
    row = conn.execute(
        select(*_histogram_columns(seconds, bounds)).where(
            per_study.c.all_final,
            per_study.c.scored_at.is_not(None),
            per_study.c.last_received >= _seconds_ago(window_s),
        )
    ).one()
    return _histogram(row, 0, bounds)


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
                    .where(Instance.status.in_(tuple(_REASON_PATTERNS)))
                    .group_by(Instance.status, category)
                )
            }
            oldest = conn.execute(
                select(_age_s(func.min(Instance.received_at))).where(
                    Instance.status.in_(PENDING_STATUSES)
                )
            ).scalar_one()
            decode, inference = _scoring(conn, window_s)
            turnaround = _turnaround(conn, window_s)
            models = conn.execute(
                select(
                    RegisteredModel.name,
                    RegisteredModel.version,
                    RegisteredModel.calibration_version,
                    RegisteredModel.state,
                )
                .where(RegisteredModel.state.in_((ModelState.ACTIVE, ModelState.SHADOW)))
                .order_by(RegisteredModel.state, RegisteredModel.version)
            ).all()
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
        models=tuple((r.name, r.version, r.calibration_version, str(r.state)) for r in models),
        worker_prediction_age_s={str(w): max(float(age), 0.0) for w, age in workers},
        worker_claim_age_s=claims,
    )


def queue_depths(
    broker_url: str, queue_names: Sequence[str], timeout_s: float = BROKER_TIMEOUT_S
) -> dict[str, int]:
    """``LLEN`` of each queue list (kombu keeps a Redis queue as a list named after it);
    ``redis.RedisError`` when the broker does not answer within ``timeout_s``."""
    client = redis.Redis.from_url(
        broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        pipe = client.pipeline(transaction=False)
        for name in queue_names:
            pipe.llen(name)
        return {name: int(n) for name, n in zip(queue_names, pipe.execute(), strict=True)}
    finally:
        client.close()


def _counter(spec: m.MetricSpec, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(spec.name, spec.help, value=value)


def _gauge(spec: m.MetricSpec, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, value=value)


def _gauge_histogram(spec: m.MetricSpec, hist: Histogram) -> GaugeHistogramMetricFamily:
    return GaugeHistogramMetricFamily(
        spec.name, spec.help, buckets=hist.buckets(), gsum_value=hist.sum
    )


def drift_metric(psi: Mapping[str, float | None]) -> GaugeMetricFamily:
    """``cxr_drift_psi{kind}`` for each kind that could be measured."""
    family = GaugeMetricFamily(m.DRIFT_PSI.name, m.DRIFT_PSI.help, labels=m.DRIFT_PSI.labels)
    for kind, value in sorted(psi.items()):
        if value is not None:
            family.add_metric([kind], value)
    return family


def snapshot_metrics(snap: PipelineSnapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    yield _counter(m.INSTANCES_RECEIVED, sum(snap.by_status.values()))
    yield _counter(m.INSTANCES_SCORED, snap.by_status.get(InstanceStatus.DONE, 0))
    for status, spec in (
        (InstanceStatus.FAILED, m.INSTANCES_FAILED),
        (InstanceStatus.NOT_ELIGIBLE, m.INSTANCES_NOT_ELIGIBLE),
    ):
        family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for category in m.reason_categories(_REASON_PATTERNS[status]):
            family.add_metric([category], snap.reasons.get((status, category), 0))
        yield family
    by_status = GaugeMetricFamily(
        m.INSTANCES_BY_STATUS.name, m.INSTANCES_BY_STATUS.help, labels=m.INSTANCES_BY_STATUS.labels
    )
    for status in InstanceStatus:
        by_status.add_metric([status.value], snap.by_status.get(status, 0))
    yield by_status
    yield _gauge(m.JOBS_IN_FLIGHT, snap.by_status.get(InstanceStatus.PROCESSING, 0))
    yield _gauge(m.OLDEST_PENDING_AGE, snap.oldest_pending_age_s)
    yield _gauge_histogram(m.SCORING_DECODE, snap.decode)
    yield _gauge_histogram(m.SCORING_INFERENCE, snap.inference)
    yield _gauge_histogram(m.TURNAROUND, snap.turnaround)
    if snap.models:
        info = InfoMetricFamily(m.MODEL.name, m.MODEL.help, labels=())
        for model in snap.models:
            info.add_metric([], dict(zip(m.MODEL.labels, model, strict=True)))
        yield info
    for spec, ages in (
        (m.WORKER_LAST_PREDICTION_AGE, snap.worker_prediction_age_s),
        (m.WORKER_LAST_CLAIM_AGE, snap.worker_claim_age_s),
    ):
        heartbeats = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for worker, age in sorted(ages.items()):
            heartbeats.add_metric([worker], age)
        yield heartbeats


class PipelineCollector:
    """A prometheus-client collector: at each scrape, the database snapshot and the queue
    depth of ``queue_names`` on ``broker_url`` (None: no broker metrics)."""

    def __init__(
        self,
        engine: Engine,
        broker_url: str | None,
        queue_names: Sequence[str],
        window_s: float = m.HISTOGRAM_WINDOW_S,
    ) -> None:
        self.engine = engine
        self.broker_url = broker_url
        self.queue_names = tuple(dict.fromkeys(queue_names))
        self.window_s = window_s

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering the collector must not query the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            snap = read_snapshot(self.engine, self.window_s)
        except SQLAlchemyError as exc:
            logger.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            yield _gauge(m.DATABASE_UP, 0)
        else:
            yield _gauge(m.DATABASE_UP, 1)
            yield from snapshot_metrics(snap)
            try:
                psi = drift.current_psi(self.engine)
            except SQLAlchemyError as exc:
                logger.warning("metrics: drift could not be read (%s)", type(exc).__name__)
            else:
                yield drift_metric(psi)
        if self.broker_url is None:
            return
        try:
            depths = queue_depths(self.broker_url, self.queue_names)
        except redis.RedisError as exc:
            logger.warning("metrics: the broker did not answer (%s)", type(exc).__name__)
            yield _gauge(m.BROKER_UP, 0)
            return
        yield _gauge(m.BROKER_UP, 1)
        family = GaugeMetricFamily(
            m.QUEUE_DEPTH.name, m.QUEUE_DEPTH.help, labels=m.QUEUE_DEPTH.labels
        )
        for name, depth in depths.items():
            family.add_metric([name], depth)
        yield family
