"""The one runner skeleton of every Celery consumer (``cxr_queue.runner``): the argv it
gives Celery and the heartbeat that healthchecks read."""

from __future__ import annotations

import threading
from pathlib import Path

from celery.signals import setup_logging

from cxr_queue.runner import Consumer, consumer_argv, heartbeat


def test_argv_names_the_role_queues_and_concurrency() -> None:
    argv = consumer_argv(Consumer(role="results", queues=["q1", "q2"], concurrency=4))
    assert argv[:2] == ["--quiet", "worker"]
    assert "--pool=threads" in argv
    assert "--concurrency=4" in argv
    assert "--queues=q1,q2" in argv
    assert any(a.startswith("--hostname=cxr-results-") for a in argv)
    assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)


def test_celery_is_kept_off_our_logging() -> None:
    receivers = [r[1]() for r in setup_logging.receivers]
    assert any(getattr(r, "__module__", "") == "cxr_queue.runner" for r in receivers)


def _one_beat(path: Path, answer: object) -> None:
    stop = threading.Event()

    def healthy() -> bool:
        stop.set()  # one pass only
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    heartbeat(path, healthy, stop, every_s=0)


def test_heartbeat_touches_the_file_while_healthy(tmp_path: Path) -> None:
    _one_beat(tmp_path / "alive", True)
    assert (tmp_path / "alive").exists()


def test_heartbeat_is_withheld_while_unhealthy(tmp_path: Path) -> None:
    _one_beat(tmp_path / "alive", False)
    assert not (tmp_path / "alive").exists()


def test_a_failing_health_check_counts_as_unhealthy_and_never_ends_the_loop(
    tmp_path: Path,
) -> None:
    _one_beat(tmp_path / "alive", ConnectionError("broker down"))
    assert not (tmp_path / "alive").exists()
