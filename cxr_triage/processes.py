"""Start and stop the child processes of ``up`` and ``demo`` (one per role, :data:`ROLES`),
and restart a worker that dies (``supervise`` for ``cxr-triage work``, ``RestartPolicy`` for
the workers of ``up``)."""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from pydantic import SecretStr
from pydantic_settings import BaseSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Role:
    """One background role: its name (the compose service, the child of ``up``) and the
    ``cxr-triage`` command that runs it."""

    name: str
    command: tuple[str, ...]
    runs: str


#: Every long-running role, in start order: ``cxr-triage up`` starts one child each (N
#: workers), docker-compose.yml one service each (tests/unit/test_deploy.py checks both).
ROLES: tuple[Role, ...] = (
    Role("listener", ("listen",), "DICOM C-ECHO/C-STORE in: file, row, scoring job"),
    Role("scheduler", ("schedule",), "reconciler and study completeness (periodic jobs)"),
    Role("worker", ("work",), "scoring jobs: decode, score in batches, heatmaps"),
    Role("results", ("send-results",), "results of complete studies to PACS (C-STORE)"),
    Role("web", ("web",), "the radiologists' web worklist"),
)


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


# ---------------------------------------------------------------------------------------
# Restarting workers (issue 12, defect 2: a worker that dies is restarted, nothing else
# stops). A worker process can die from the inside (Celery's "Unrecoverable error" when
# Redis goes away mid-ack, an OOM kill); its leases lapse and the reconciler hands its
# jobs to the others, so a restart only has to bring the capacity back.

#: Exit code of a child refused at start (bad settings, ``cxr_triage.cli.main``):
#: restarting it cannot help.
EXIT_CONFIGURATION = 2
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM (warm shutdown) when its supervisor dies, even by
    SIGKILL, so no orphan worker keeps consuming."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class RestartPolicy:
    """Exponential backoff between restarts, reset after a child ran ``reset_after_s``."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    reset_after_s: float = 60.0
    _delay: float = 0.0

    def next_delay(self, ran_for_s: float) -> float:
        if ran_for_s >= self.reset_after_s or self._delay == 0.0:
            self._delay = self.first_delay_s
        else:
            self._delay = min(self._delay * 2, self.max_delay_s)
        return self._delay

    @staticmethod
    def should_restart(returncode: int) -> bool:
        return returncode != EXIT_CONFIGURATION


def cxr_triage_command(*args: str) -> list[str]:
    """``python -m cxr_triage ARGS`` with this interpreter."""
    return [sys.executable, "-m", "cxr_triage", *args]


def supervise(
    name: str,
    command: Sequence[str],
    env: dict[str, str],
    stop: threading.Event,
    policy: RestartPolicy | None = None,
) -> int:
    """Run ``command`` and restart it whenever it exits, until ``stop`` is set (then
    SIGTERM it and wait). Returns 0, or the child's code when it was refused at start
    (restarting would not help)."""
    policy = policy or RestartPolicy()
    while not stop.is_set():
        proc = subprocess.Popen(
            list(command),
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("started %s (pid %d)", name, proc.pid)
        started = time.monotonic()
        while proc.poll() is None and not stop.wait(0.5):
            pass
        if stop.is_set():
            stop_all([Child(name, proc)])
            return 0
        code = proc.returncode
        if not policy.should_restart(code):
            log.error("%s was refused at start (exit code %d); not restarting", name, code)
            return code
        delay = policy.next_delay(time.monotonic() - started)
        log.warning(
            "%s (pid %d) exited with code %d; restarting in %.0f s", name, proc.pid, code, delay
        )
        stop.wait(delay)
    return 0


def restart_dead_workers(
    children: list[Child], env: dict[str, str], policy: RestartPolicy, prefix: str = "worker-"
) -> Child | None:
    """For ``up``: replace every exited worker child (named ``worker-N``) with a fresh one,
    in place; return the first other child that exited (the caller stops everything)."""
    for index, child in enumerate(children):
        code = child.proc.poll()
        if code is None:
            continue
        if not child.name.startswith(prefix) or not policy.should_restart(code):
            return child
        log.warning("%s exited with code %d; restarting it", child.name, code)
        children[index] = spawn(child.name, ["work"], env)
    return None
