"""The pipeline as Postgres and Redis see it, computed at scrape time: a prometheus-client
collector for the web app's ``/metrics`` (``worklist.metrics_route``; names and help in
``cxr_common.metrics``).

Each scrape reads the database snapshot (:func:`cxr_db.instances.stats.read_snapshot`:
one read-only transaction, its cost described there), then drift
(:func:`cxr_db.drift.current_psi`: the last 24 hours of predictions against the active
model's reference, in its own statements), then the queue depth: one Redis ``LLEN`` per
queue name, with a 1 s socket timeout.

A database or broker that does not answer gives ``cxr_database_up 0`` or
``cxr_broker_up 0`` and leaves out what it would have told; the scrape itself succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import redis
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cxr_common import metrics as m
from cxr_db import drift
from cxr_db.escalations import store as escalations
from cxr_db.hl7.tables import Hl7SendStatus
from cxr_db.instances.stats import (
    REASON_PATTERNS,
    Histogram,
    PipelineSnapshot,
    ResultsSnapshot,
    read_snapshot,
)
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results.states import ResultState, SendStatus

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 1.0


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


def _histogram(spec: m.MetricSpec, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(spec.name, spec.help, buckets=hist.buckets(), sum_value=hist.sum)


def time_to_read_metric(hists: Mapping[bool, Histogram]) -> HistogramMetricFamily:
    spec = m.TIME_TO_READ
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    for flagged, hist in sorted(hists.items(), reverse=True):
        family.add_metric([str(flagged).lower()], hist.buckets(), hist.sum)
    return family


def results_metrics(res: ResultsSnapshot) -> Iterator[Metric]:
    sends = CounterMetricFamily(m.RESULT_SENDS.name, m.RESULT_SENDS.help, labels=["outcome"])
    for outcome in SendStatus:
        sends.add_metric([outcome.value], res.sends.get(outcome, 0))
    yield sends
    hl7 = CounterMetricFamily(m.HL7_SENDS.name, m.HL7_SENDS.help, labels=["outcome"])
    for hl7_outcome in Hl7SendStatus:
        hl7.add_metric([hl7_outcome.value], res.hl7_sends.get(hl7_outcome.value, 0))
    yield hl7
    studies = GaugeMetricFamily(m.RESULT_STUDIES.name, m.RESULT_STUDIES.help, labels=["state"])
    for state in ResultState:
        studies.add_metric([state.value], res.studies.get(state, 0))
    yield studies
    yield _gauge(m.RESULTS_UNSENT, res.unsent)
    yield _gauge(m.RESULTS_OLDEST_UNSENT, res.oldest_unsent_s)


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
        for category in m.reason_categories(REASON_PATTERNS[status]):
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
    yield _histogram(m.SCORING_DECODE, snap.decode)
    yield _histogram(m.SCORING_INFERENCE, snap.inference)
    yield _histogram(m.TURNAROUND, snap.turnaround)
    yield time_to_read_metric(snap.time_to_read)
    yield _gauge(m.FLAGGED_UNREAD_OLDEST, snap.flagged_unread_oldest_s)
    yield _gauge(m.UNSCORED_OLDEST, snap.unscored_oldest_s)
    yield from results_metrics(snap.results)
    yield _counter(m.SIGN_IN_FAILURES, snap.sign_in_failures)
    yield _counter(m.LOCKOUTS, snap.lockouts)
    yield _gauge(m.ACCOUNTS_LOCKED, snap.accounts_locked)
    info = InfoMetricFamily(m.MODEL.name, m.MODEL.help, labels=())
    for model in snap.models:  # none yet: the family without samples
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


def escalation_metrics(counts: escalations.MetricCounts) -> Iterator[Metric]:
    """``cxr_escalations_total{outcome}`` and ``cxr_escalations_open``."""
    family = CounterMetricFamily(m.ESCALATIONS.name, m.ESCALATIONS.help, labels=["outcome"])
    for outcome, n in sorted(counts.by_outcome.items()):
        family.add_metric([outcome], n)
    yield family
    yield _gauge(m.ESCALATIONS_OPEN, counts.open)


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
                yield from escalation_metrics(escalations.metric_counts(self.engine))
            except SQLAlchemyError as exc:
                logger.warning("metrics: escalations could not be read (%s)", type(exc).__name__)
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
