"""Small helpers every kind of test shares: :func:`wait_until` (the one polling loop),
:func:`free_port`, and :class:`UpProcess` (a running ``cxr-triage up``, started by the
``start_up`` fixture in ``tests/conftest.py``)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: How often :func:`wait_until` asks again.
POLL_S = 0.1


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    alive: Callable[[], None] | None = None,
    interval: float = POLL_S,
) -> T:
    """Ask ``predicate`` until it returns something true, and return that.

    Fails (AssertionError) after ``timeout`` seconds, saying what was awaited and what the
    predicate last returned (``what`` may be a function, asked only then, to describe the
    state reached); ``alive`` is called before each ask and should raise when a
    process the wait depends on has died (see :func:`running`), so a dead process fails the
    test at once instead of at the timeout. The pause between asks is the only wait: no test
    sleeps for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not {said} after {timeout:g} s (last: {value!r})")
        time.sleep(interval)  # the one pause between polls


def running(
    procs: Sequence[subprocess.Popen[bytes]], log: Path | None = None
) -> Callable[[], None]:
    """An ``alive`` check for :func:`wait_until`: fails when one of ``procs`` has exited,
    with the tail of ``log``."""

    def check() -> None:
        for proc in procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                raise AssertionError(f"process {proc.args!r} exited with {proc.returncode}\n{tail}")

    return check


def thread_running(thread: threading.Thread) -> Callable[[], None]:
    """An ``alive`` check for :func:`wait_until`: fails when ``thread`` has ended."""

    def check() -> None:
        if not thread.is_alive():
            raise AssertionError(f"thread {thread.name} ended")

    return check


@dataclass
class UpProcess:
    """A ``cxr-triage up`` child: its environment (for CLI calls against it), ports and log."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    data_dir: Path
    dicom_port: int
    web_port: int
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def alive(self) -> None:
        """Fails with the log's tail when ``up`` has exited (an ``alive`` for wait_until)."""
        running([self.proc], self.log)()

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
