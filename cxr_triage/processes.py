"""Start and stop the child processes of ``up`` and ``demo`` (listener, workers)."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from pydantic import SecretStr
from pydantic_settings import BaseSettings

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


def spawn(
    name: str, args: Sequence[str], env: dict[str, str], output: IO[bytes] | None = None
) -> Child:
    """Run ``python -m cxr_triage ARGS`` as a child process; its stdout and stderr go to
    ``output`` (an open file, e.g. a log) or, by default, to ours."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", *args],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )
    log.info("started %s (pid %d)", name, proc.pid)
    return Child(name, proc)


def settings_env(settings: BaseSettings, names: Iterable[str]) -> dict[str, str]:
    """The ``CXR_*`` environment variables that give a child process these values of
    ``settings`` (unset ones are left out)."""
    prefix = settings.model_config.get("env_prefix", "")
    env: dict[str, str] = {}
    for name in names:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        env[f"{prefix}{name.upper()}"] = str(value)
    return env


def wait_for_port(host: str, port: int, children: Sequence[Child], timeout_s: float = 60) -> None:
    """Block until something accepts connections on ``host:port`` (or a child dies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f} s")


def stop_all(children: Sequence[Child], timeout_s: float = 30) -> None:
    """SIGTERM every child, wait for a clean exit, SIGKILL what does not stop."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", child.name)
            child.proc.kill()
            child.proc.wait()
