"""One runner skeleton for every Celery consumer (the scoring worker, the results sender).

A consumer process is always the same: a Celery app from ``make_celery``, its tasks
registered, then :func:`run_consumer` with a :class:`Consumer` that says what differs
(role, queues, concurrency, heartbeat file and what "healthy" means). The runner:

* builds Celery's argv (threads pool, no banner, no gossip/mingle/heartbeat, a hostname
  ``cxr-<role>-<pid>@<host>``): :func:`consumer_argv`;
* keeps Celery off our logging (the ``setup_logging`` signal, connected on import, and
  ``worker_hijack_root_logger=False`` in ``make_celery``);
* touches the heartbeat file every ``heartbeat_every_s`` while ``healthy()`` holds (the
  compose healthchecks read its age): :func:`heartbeat`;
* installs the process's metrics (``install_metrics``) before it consumes;
* consumes until SIGTERM/SIGINT (Celery's warm shutdown), then stops the heartbeat and
  calls ``close`` whatever happened.

Restarts are the supervisor's (``cxr_triage.processes.supervise`` for ``cxr-triage work``,
compose's ``restart: unless-stopped``): a consumer that dies loses nothing, its jobs come
back (leases, ``acks_late``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from celery.signals import setup_logging

from cxr_queue.live import queue_depth

log = logging.getLogger(__name__)

#: How often the heartbeat file is touched (the healthchecks allow 60 s).
HEARTBEAT_EVERY_S = 10.0


@setup_logging.connect  # type: ignore[untyped-decorator]
def _keep_our_logging(**_: object) -> None:
    """Stop Celery from replacing the logging configuration."""


def always_healthy() -> bool:
    return True


@dataclass(frozen=True)
class Consumer:
    """What one consumer process runs: the parts that differ between roles."""

    role: str
    """``worker``, ``results``: names the Celery hostname and the log lines."""
    queues: Sequence[str]
    concurrency: int
    log_level: str = "INFO"
    heartbeat_file: Path | None = None
    healthy: Callable[[], bool] = always_healthy
    """Whether the heartbeat may be touched now (e.g. work progresses)."""
    heartbeat_every_s: float = HEARTBEAT_EVERY_S


def consumer_argv(consumer: Consumer) -> list[str]:
    """Celery's ``worker`` arguments for ``consumer``."""
    return [
        "--quiet",  # no banner: our own log lines say what was loaded
        "worker",
        "--pool=threads",
        f"--concurrency={consumer.concurrency}",
        f"--queues={','.join(consumer.queues)}",
        f"--hostname=cxr-{consumer.role}-{os.getpid()}@{socket.gethostname()}",
        f"--loglevel={consumer.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def heartbeat(
    path: Path,
    healthy: Callable[[], bool],
    stop: threading.Event,
    every_s: float = HEARTBEAT_EVERY_S,
    role: str = "consumer",
) -> None:
    """Touch ``path`` every ``every_s`` while ``healthy()``, until ``stop`` is set. A health
    function that raises counts as unhealthy (the loop never dies)."""
    while not stop.is_set():
        try:
            ok = healthy()
        except Exception as exc:  # noqa: BLE001 - any error: cannot tell, so not healthy
            log.warning("%s heartbeat: health check failed (%s)", role, type(exc).__name__)
            ok = False
        if ok:
            try:
                path.touch()
            except OSError as exc:
                log.warning("%s heartbeat: cannot touch %s (%s)", role, path, exc.strerror)
        else:
            log.warning("%s heartbeat withheld: not healthy", role)
        stop.wait(every_s)


def start_heartbeat(
    path: Path | None,
    healthy: Callable[[], bool],
    every_s: float = HEARTBEAT_EVERY_S,
    role: str = "consumer",
) -> threading.Event:
    """Start :func:`heartbeat` in a daemon thread (nothing when ``path`` is None); set the
    returned event to stop it."""
    stop = threading.Event()
    if path is not None:
        threading.Thread(
            target=heartbeat,
            args=(path, healthy, stop, every_s, role),
            name=f"cxr-{role}-heartbeat",
            daemon=True,
        ).start()
    return stop


def broker_reachable(app: Celery, queue_name: str) -> Callable[[], bool]:
    """A health function: the broker answers (reading ``queue_name``'s depth)."""

    def healthy() -> bool:
        queue_depth(app, queue_name)
        return True

    return healthy


def run_consumer(
    app: Celery,
    consumer: Consumer,
    *,
    install_metrics: Callable[[], object] | None = None,
    close: Callable[[], None] | None = None,
) -> int:
    """Consume ``consumer.queues`` until SIGTERM/SIGINT; returns 0 after a clean stop."""
    # Containers run as an unprivileged user (deploy/Dockerfile); in a root dev shell the
    # JSON-only serializer makes Celery's superuser warning moot, so keep the log readable.
    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    stop: threading.Event | None = None
    try:
        if install_metrics is not None:
            install_metrics()
        stop = start_heartbeat(
            consumer.heartbeat_file, consumer.healthy, consumer.heartbeat_every_s, consumer.role
        )
        log.info("%s consuming %s", consumer.role, ", ".join(consumer.queues))
        app.worker_main(consumer_argv(consumer))
    finally:
        if stop is not None:
            stop.set()
        if close is not None:
            close()
    return 0
