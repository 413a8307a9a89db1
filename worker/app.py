"""Worker process start-up: load the model once, configure Celery, consume the queue.

The pool is ``threads`` so that concurrent tasks in one process can share one model and
be scored together by ``batching.Batcher``; by default twice the maximum batch size run at
once, so one batch decodes while the other is scored.
Scale out with more processes (``docker compose up --scale worker=N``).

``cxr-triage work`` runs this in a child process and restarts it if it dies
(``cxr_triage.processes.supervise``): Celery's threads pool on the Redis transport can end
with "Unrecoverable error" when Redis goes away while jobs are being acknowledged
(kombu's ``restore_unacked`` on a closed connection); the jobs it held come back through
their lapsed leases, so a restart loses nothing.

The process is run by the shared consumer runner (``cxr_queue.runner``: argv, logging,
heartbeat, metrics, shutdown). The heartbeat file (``heartbeat_file``, for container
healthchecks) is touched only while
the process makes progress (a job or a batch finished within ``STALL_S``) or is idle with
an empty queue; a process that holds jobs and finishes none leaves it alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from cxr_common.settings import WorkerSettings, resolve_batching
from cxr_db import make_engine
from cxr_queue import lane_queues, make_celery
from cxr_queue.live import queue_depth
from cxr_queue.runner import Consumer, run_consumer
from worker import metrics as worker_metrics
from worker.leases import Progress
from worker.pipeline import Reliability, ScoringRuntime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)

#: Seconds without a finished job or batch after which a busy worker counts as stuck.
STALL_S = 60.0


def build_runtime(settings: WorkerSettings) -> ScoringRuntime:
    """Open the database engine and load the registry's active and shadow models
    (sha256-verified, each with its registered calibration); an empty registry gets the
    configured model (``CXR_MODEL_DIR``, default the shipped one) registered and active."""
    from cxr_registry import ensure_configured_model
    from worker.registry import ServedModels

    apply_torch_threads(settings)
    batch, concurrency = resolve_batching(settings, _device_type(settings.device))
    engine = make_engine(settings.database_url_value(), pool_size=concurrency + 2)
    ensure_configured_model(engine, settings.model_dir, settings.calibration_path)
    models = ServedModels(engine, settings.device)
    models.current()  # load now: a model that cannot load stops the worker here
    log.info(
        "population policy %s, unknown age %s",
        settings.population_policy.value,
        settings.unknown_age.value,
    )
    return ScoringRuntime(
        engine,
        models,
        concurrency=concurrency,
        batch_max_size=batch,
        batch_max_wait_s=settings.batch_max_wait_ms / 1000,
        heatmaps=settings.heatmaps,
        population_policy=settings.population_policy,
        unknown_age=settings.unknown_age,
        reliability=reliability(settings),
    )


def apply_torch_threads(settings: WorkerSettings) -> int:
    """Set torch's CPU thread count from ``CXR_TORCH_THREADS`` (unset: leave torch's default).

    More intra-op threads than free cores make the forward pass several times slower
    (BENCHMARKS.md, "Threads"), so a machine running N workers wants cores / N each.
    Returns the count in force."""
    import torch

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    threads = int(torch.get_num_threads())
    log.info("torch CPU threads: %d", threads)
    return threads


def reliability(settings: WorkerSettings) -> Reliability:
    return Reliability(
        lease_ttl_s=settings.lease_ttl_s,
        lease_renew_s=settings.lease_renew_s,
        max_attempts=settings.max_attempts,
        batch_timeout_s=settings.batch_timeout_s,
        task_time_limit_s=settings.task_time_limit_s,
        limits=settings.decode_limits(),
    )


def _device_type(device: str | None) -> str:
    if device:
        return "cuda" if device.startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def create_app(settings: WorkerSettings) -> tuple[Celery, ScoringRuntime]:
    app = make_celery(settings.broker_url_value(), settings.queue_name)
    app.conf.task_time_limit = settings.task_time_limit_s
    runtime = build_runtime(settings)
    register_tasks(app, lambda: runtime, settings.max_retries)
    return app, runtime


def is_healthy(progress: Progress, depth: Callable[[], int], stall_s: float = STALL_S) -> bool:
    """Progress within ``stall_s``, or nothing in flight and nothing waiting."""
    in_flight, since = progress.snapshot()
    if since < stall_s:
        return True
    if in_flight:
        log.warning("jobs in flight but none finished in %.0f s", stall_s)
        return False
    try:
        return depth() == 0
    except Exception as exc:  # noqa: BLE001 - any broker error: cannot tell, so not healthy
        log.warning("heartbeat: cannot read the queue depth (%s)", type(exc).__name__)
        return False


def run_worker(settings: WorkerSettings) -> int:
    """Consume scoring jobs until SIGTERM/SIGINT (Celery's warm shutdown), through the
    shared consumer runner (``cxr_queue.runner``)."""
    app, runtime = create_app(settings)

    def healthy() -> bool:
        return is_healthy(runtime.progress, lambda: queue_depth(app, *queues))

    # urgent first: cxr_queue.lanes.LaneCycle (make_celery) orders every BRPOP
    queues = lane_queues(settings.queue_name)
    consumer = Consumer(
        role="worker",
        queues=queues,
        concurrency=runtime.concurrency,
        log_level=settings.log_level,
        heartbeat_file=settings.heartbeat_file,
        healthy=healthy,
    )
    return run_consumer(
        app,
        consumer,
        install_metrics=lambda: worker_metrics.install(settings, runtime),
        close=runtime.close,
    )
