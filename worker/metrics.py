"""A worker process's own metrics (``CXR_METRICS_PORT``): batch size and batch scoring
time (histograms), jobs by outcome, the loaded model. Names, help and buckets in
``cxr_common.metrics``.

Wired with two calls: :func:`timed_batch` decorates ``ScoringRuntime._score_batch``, and
:func:`install` (in ``worker.app.run_worker``) sets the model, counts every
``cxr.score_instance`` result through Celery's ``task_postrun`` signal and starts the port.
One worker is one process (Celery's ``threads`` pool), so its default registry holds all
of it. The metric objects are created on first use (importing this module creates nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from celery.signals import task_postrun
from prometheus_client import Counter, Histogram, Info

from cxr_common import metrics as m
from cxr_common.metrics import MetricsServer, serve_metrics
from cxr_common.settings import WorkerSettings
from cxr_queue import SCORE_TASK
from worker.outcomes import JobOutcome

if TYPE_CHECKING:
    from worker.pipeline import ScoringRuntime

logger = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

_OUTCOMES = frozenset(o.value for o in JobOutcome)
RETRY = "retry"
ERROR = "error"


@dataclass(frozen=True)
class _Metrics:
    batch_size: Histogram
    batch_seconds: Histogram
    jobs: Counter
    model: Info


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics(
                batch_size=Histogram(
                    m.WORKER_BATCH_SIZE.name,
                    m.WORKER_BATCH_SIZE.help,
                    buckets=m.BATCH_SIZE_BUCKETS,
                ),
                batch_seconds=Histogram(
                    m.WORKER_BATCH_SECONDS.name,
                    m.WORKER_BATCH_SECONDS.help,
                    buckets=m.SCORING_BUCKETS_S,
                ),
                jobs=Counter(m.WORKER_JOBS.name, m.WORKER_JOBS.help, m.WORKER_JOBS.labels),
                model=Info(m.WORKER_MODEL.name, m.WORKER_MODEL.help),
            )
        return _metrics


def observe_batch(size: int, seconds: float) -> None:
    """Record one batch (never raises)."""
    try:
        metrics = _get()
        metrics.batch_size.observe(size)
        metrics.batch_seconds.observe(seconds)
    except Exception:
        logger.debug("batch metric not recorded", exc_info=True)


def timed_batch(fn: Callable[[S, Sequence[T]], R]) -> Callable[[S, Sequence[T]], R]:
    """Decorate a batch function (``self, items``): its size and time when it returns."""

    @wraps(fn)
    def run(self: S, items: Sequence[T]) -> R:
        t0 = time.perf_counter()
        out = fn(self, items)
        observe_batch(len(items), time.perf_counter() - t0)
        return out

    return run


def outcome_label(retval: object, state: str | None) -> str:
    """The ``outcome`` label of one finished task: the job's outcome (``JobOutcome``),
    ``retry`` or ``error``; never free text."""
    if state == "RETRY":
        return RETRY
    if isinstance(retval, str) and retval in _OUTCOMES:
        return retval
    return ERROR


def _on_task_postrun(
    sender: Any = None, retval: object = None, state: str | None = None, **_: object
) -> None:
    try:
        if getattr(sender, "name", None) != SCORE_TASK:
            return
        _get().jobs.labels(outcome_label(retval, state)).inc()
    except Exception:
        logger.debug("job metric not counted", exc_info=True)


def install(settings: WorkerSettings, runtime: ScoringRuntime) -> MetricsServer | None:
    """Set the model info, count every scoring job, and serve this process's metrics on
    ``CXR_METRICS_HOST:CXR_METRICS_PORT`` (unset: off)."""
    metrics = _get()
    contract = runtime.model.contract
    metrics.model.info(
        {
            "model_name": contract.name,
            "model_version": contract.version,
            "calibration_version": runtime.calibration.version or "",
            "device": str(runtime.model.device),
        }
    )
    for outcome in (*sorted(_OUTCOMES), RETRY, ERROR):
        metrics.jobs.labels(outcome)  # every outcome from 0, so rate() sees the first one
    task_postrun.connect(_on_task_postrun, weak=False)
    return serve_metrics(settings.metrics_host, settings.metrics_port, "worker")
