"""Real processes for integration tests: an in-process listener and worker subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from cxr_common.settings import ListenerSettings
from cxr_db.instances import reads as instance_reads
from cxr_db.instances.statuses import FINAL_STATUSES, InstanceStatus
from cxr_queue import lane_queues, make_celery
from tests.conftest import Services


@pytest.fixture
def listener(services: Services, engine: Engine) -> Iterator[int]:
    """A real C-STORE listener on a free loopback port; yields the port."""
    from dicom_listener.server import start_listener

    settings = ListenerSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        queue_name=services.queue_name,
        results_queue_name=f"{services.queue_name}-results",
        data_dir=services.data_dir,
        storage_uri=(services.data_dir / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
    )
    app = make_celery(services.broker_url, services.queue_name)
    handle = start_listener(settings, engine, app)
    yield handle.port
    handle.shutdown()


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
        env = services.env()
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
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, InstanceStatus] = {}
    while time.monotonic() < deadline:
        statuses = instance_reads.instance_statuses(engine)
        if len(statuses) >= expected and all(s in FINAL_STATUSES for s in statuses.values()):
            return statuses
        for proc in procs or []:
            assert proc.poll() is None, f"worker exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"not final after {timeout_s} s: {statuses}")


def wait_until_queue_drained(services: Services, timeout_s: float = 60) -> None:
    """Poll Redis until the session's queue (both lanes) has no waiting or unacknowledged
    jobs."""
    import redis

    client = redis.Redis.from_url(services.broker_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            waiting = sum(int(client.llen(q)) for q in lane_queues(services.queue_name))
            if waiting == 0 and not _unacked_for(client, services):
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"queue {services.queue_name} not drained after {timeout_s} s")


def _unacked_for(client: Any, services: Services) -> int:
    """Messages of this session's queue that a worker holds unacknowledged. Kombu keeps one
    ``unacked`` hash per Redis database for every queue; other sessions' entries (a worker
    killed on the same server) must not count."""
    mine = services.queue_name.encode()
    return sum(1 for value in client.hvals("unacked") if mine in value)
