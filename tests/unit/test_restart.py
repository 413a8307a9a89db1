"""Workers that die are restarted (issue 12, defect 2): ``supervise`` for ``cxr-triage
work``, ``restart_dead_workers`` for ``up``. Real child processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cxr_triage.processes import (
    EXIT_CONFIGURATION,
    Child,
    RestartPolicy,
    restart_dead_workers,
    supervise,
)

FAST = RestartPolicy(first_delay_s=0.01, max_delay_s=0.02)


def test_backoff_doubles_up_to_a_cap_and_resets_after_a_long_run() -> None:
    policy = RestartPolicy(first_delay_s=1, max_delay_s=4, reset_after_s=60)
    assert [policy.next_delay(0.5) for _ in range(4)] == [1, 2, 4, 4]
    assert policy.next_delay(120) == 1
    assert not RestartPolicy.should_restart(EXIT_CONFIGURATION)
    assert RestartPolicy.should_restart(-9)
    assert RestartPolicy.should_restart(1)


def test_a_worker_that_dies_is_started_again_until_stop(tmp_path: Path) -> None:
    """The child crashes twice (exit 1, as Celery's "Unrecoverable error"), then runs;
    stop ends it and supervise returns 0."""
    runs = tmp_path / "runs"
    running = tmp_path / "running"
    script = (
        "import sys, time, pathlib\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text('x' * (n + 1))\n"
        "if n < 2:\n    sys.exit(1)\n"
        f"pathlib.Path({str(running)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            supervise("worker", [sys.executable, "-c", script], {}, stop, FAST)
        )
    )
    thread.start()
    try:
        for _ in range(600):
            if running.exists():
                break
            stop.wait(0.05)
        assert running.exists()
        assert runs.read_text() == "xxx"  # two deaths, two restarts
    finally:
        stop.set()
        thread.join(30)
    assert result == [0]


def test_a_worker_refused_at_start_is_not_restarted_in_a_loop() -> None:
    stop = threading.Event()
    command = [sys.executable, "-c", f"raise SystemExit({EXIT_CONFIGURATION})"]
    assert supervise("worker", command, {}, stop, FAST) == EXIT_CONFIGURATION


def test_up_restarts_a_dead_worker_but_reports_any_other_dead_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cxr_triage.processes as processes

    dead_worker = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    dead_worker.wait()
    children = [Child("worker-1", dead_worker)]
    spawned: list[tuple[str, list[str]]] = []

    def spawn(name: str, args: list[str], env: dict[str, str]) -> Child:
        spawned.append((name, args))  # `cxr-triage work` itself is too heavy for a unit test
        return Child(name, subprocess.Popen([sys.executable, "-c", "pass"]))

    monkeypatch.setattr(processes, "spawn", spawn)
    assert restart_dead_workers(children, {}, FAST) is None
    assert spawned == [("worker-1", ["work"])]
    assert children[0].proc is not dead_worker
    children[0].proc.wait()
    listener = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    listener.wait()
    dead = restart_dead_workers([Child("listener", listener)], {}, FAST)
    assert dead is not None
    assert dead.name == "listener"
