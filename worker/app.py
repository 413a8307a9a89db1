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

The heartbeat file (``heartbeat_file``, for container healthchecks) is touched only while
the process makes progress (a job or a batch finished within ``STALL_S``) or is idle with
an empty queue; a process that holds jobs and finishes none leaves it alone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from celery import Celery
from celery.signals import setup_logging

from cxr_common.settings import ResultSettings, WorkerSettings, resolve_batching
from cxr_db import make_engine
from cxr_queue import make_celery
from cxr_queue.live import queue_depth
from worker import metrics as worker_metrics
from worker.leases import Progress
from worker.pipeline import Reliability, ScoringRuntime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)

#: Seconds without a finished job or batch after which a busy worker counts as stuck.
STALL_S = 60.0


@setup_logging.connect  # type: ignore[untyped-decorator]
def _keep_our_logging(**_: object) -> None:
    """Stop Celery from replacing the logging configuration."""


def build_runtime(settings: WorkerSettings) -> ScoringRuntime:
    """Open the database engine and load the registry's active and shadow models
    (sha256-verified, each with its registered calibration); an empty registry gets the
    configured model (``CXR_MODEL_DIR``, default the shipped one) registered and active."""
    from worker.registry import ServedModels, ensure_configured_model

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
        return False
    try:
        return depth() == 0
    except Exception as exc:  # noqa: BLE001 - any broker error: cannot tell, so not healthy
        log.warning("heartbeat: cannot read the queue depth (%s)", type(exc).__name__)
        return False


def _heartbeat(
    path: Path, healthy: Callable[[], bool], stop: threading.Event, every_s: float = 10.0
) -> None:
    while not stop.is_set():
        if healthy():
            path.touch()
        else:
            log.warning("heartbeat withheld: jobs in flight but none finished in %.0f s", STALL_S)
        stop.wait(every_s)


def run_worker(settings: WorkerSettings) -> int:
    """Consume scoring jobs until SIGTERM/SIGINT (Celery's warm shutdown)."""
    # Containers run as an unprivileged user (deploy/Dockerfile); in a root dev shell the
    # JSON-only serializer makes Celery's superuser warning moot, so keep the log readable.
    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    app, runtime = create_app(settings)
    worker_metrics.install(settings, runtime)
    argv = [
        "--quiet",  # no banner: our own log line says what was loaded
        "worker",
        "--pool=threads",
        f"--concurrency={runtime.concurrency}",
        f"--queues={settings.queue_name}",
        f"--hostname=cxr-worker-{os.getpid()}@{socket.gethostname()}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    stop = threading.Event()
    if settings.heartbeat_file is not None:

        def healthy() -> bool:
            return is_healthy(runtime.progress, lambda: queue_depth(app, settings.queue_name))

        threading.Thread(
            target=_heartbeat, args=(settings.heartbeat_file, healthy, stop), daemon=True
        ).start()
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        runtime.close()
    return 0


# ---------------------------------------------------------------- results to PACS


def run_results_worker(settings: ResultSettings) -> int:
    """``cxr-triage send-results``: consume the results queue only (no model is loaded).

    A process of its own, so that C-STOREs waiting on a slow or absent PACS never hold a
    scoring thread: scoring goes on whatever the PACS does. One thread per job; the jobs
    are few (one per complete study) and mostly wait on the network."""
    from cxr_results import parse_destinations
    from worker.results import ResultsRuntime, register_results_task

    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    destinations = parse_destinations(settings.result_destinations)  # fail fast when malformed
    log.info(
        "results to %s as %s",
        ", ".join(map(str, destinations)) or "no destination (nothing is sent)",
        settings.result_calling_ae_title,
    )
    app = make_celery(settings.broker_url_value(), settings.results_queue_name)
    runtime = ResultsRuntime(make_engine(settings.database_url_value(), pool_size=6), settings)
    register_results_task(
        app, lambda: runtime, settings.result_max_retries, settings.result_retry_max_backoff_s
    )
    argv = [
        "--quiet",
        "worker",
        "--pool=threads",
        "--concurrency=4",
        f"--queues={settings.results_queue_name}",
        f"--hostname=cxr-results-{os.getpid()}@{socket.gethostname()}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    stop = threading.Event()
    if settings.result_heartbeat_file is not None:
        threading.Thread(
            target=_heartbeat, args=(settings.result_heartbeat_file, stop), daemon=True
        ).start()
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        runtime.close()
    return 0
