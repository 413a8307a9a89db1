"""Start and stop the child processes of ``up`` and ``demo`` (listener, workers)."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


def spawn(name: str, args: Sequence[str], env: dict[str, str]) -> Child:
    """Run ``python -m cxr_triage ARGS`` as a child process sharing our stdout/stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "cxr_triage", *args], env=env)
    log.info("started %s (pid %d)", name, proc.pid)
    return Child(name, proc)


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
