"""Real processes for integration tests: an in-process listener and worker subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from cxr_db.instances import reads as instance_reads
from cxr_db.instances.statuses import FINAL_STATUSES, InstanceStatus
from cxr_queue import lane_queues
from tests.conftest import Services, StartListener
from tests.support import running, wait_until


@pytest.fixture
def listener(services: Services, start_listener: StartListener) -> int:
    """A real C-STORE listener on a free loopback port, storing where the workers read
    (the session's data folder); the port. The listener only listens: a test that needs
    re-enqueueing or study completion starts the scheduler (``cxr_scheduler``)."""
    return start_listener(folder=services.data_dir).port


def _register_model_as_owner(services: Services, env: dict[str, str]) -> None:
    """What ``cxr-triage migrate`` does before compose starts workers: the configured
    model registered and active when none is (the worker's role may only read the
    registry). A model the worker should refuse is left for the worker to refuse."""
    if not services.roles:
        return
    from cxr_db import make_engine
    from cxr_registry import ensure_configured_model

    model_dir, calibration = env.get("CXR_MODEL_DIR"), env.get("CXR_CALIBRATION_PATH")
    engine = make_engine(services.database_url, pool_size=1)
    try:
        ensure_configured_model(
            engine,
            Path(model_dir) if model_dir else None,
            Path(calibration) if calibration else None,
        )
    except Exception:  # noqa: BLE001 - the worker reports a bad model its own way
        pass
    finally:
        engine.dispose()


@pytest.fixture
def start_worker(services: Services) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``cxr-triage work`` subprocesses against the test services; stop them after."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(
        batch_size: int = 4,
        wait_ms: int = 500,
        log: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        env = services.env("worker")
        _register_model_as_owner(services, {**env, **(extra_env or {})})
        env.update(CXR_BATCH_MAX_SIZE=str(batch_size), CXR_BATCH_MAX_WAIT_MS=str(wait_ms))
        env.update(extra_env or {})
        with open(log or os.devnull, "wb") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", "work"], env=env, stdout=out, stderr=out
            )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until_final(
    engine: Engine,
    expected: int,
    timeout_s: float = 180,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> dict[str, InstanceStatus]:
    """Poll Postgres until ``expected`` instances are in a final state (or fail)."""

    def final() -> dict[str, InstanceStatus] | None:
        statuses = instance_reads.instance_statuses(engine)
        done = len(statuses) >= expected and all(s in FINAL_STATUSES for s in statuses.values())
        return statuses if done else None

    return wait_until(
        final,
        timeout_s,
        lambda: f"{expected} instances final (now {instance_reads.instance_statuses(engine)})",
        alive=running(procs or []),
    )


def wait_until_queue_drained(services: Services, timeout_s: float = 60) -> None:
    """Poll Redis until the session's queue (both lanes) has no waiting or unacknowledged
    jobs."""
    import redis

    client = redis.Redis.from_url(services.broker_url)
    try:
        wait_until(
            lambda: (
                sum(int(client.llen(q)) for q in lane_queues(services.queue_name)) == 0
                and not _unacked_for(client, services)
            ),
            timeout_s,
            f"queue {services.queue_name} drained (both lanes)",
        )
    finally:
        client.close()


def _unacked_for(client: Any, services: Services) -> int:
    """Messages of this session's queue that a worker holds unacknowledged. Kombu keeps one
    ``unacked`` hash per Redis database for every queue; other sessions' entries (a worker
    killed on the same server) must not count."""
    mine = services.queue_name.encode()
    return sum(1 for value in client.hvals("unacked") if mine in value)
