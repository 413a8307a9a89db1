"""What the worker's heartbeat file means (issue 12, defect 8): touched while work
progresses or while there is nothing to do, left alone while jobs are stuck."""

from __future__ import annotations

from worker.app import is_healthy
from worker.leases import Progress


def test_recent_progress_is_healthy_even_with_jobs_in_flight() -> None:
    progress = Progress()
    progress.started()
    assert is_healthy(progress, lambda: 5, stall_s=3600)


def test_jobs_in_flight_and_nothing_finished_is_stuck() -> None:
    progress = Progress()
    progress.started()
    assert not is_healthy(progress, lambda: 0, stall_s=0.0)


def test_idle_is_healthy_only_with_an_empty_queue() -> None:
    progress = Progress()
    progress.started()
    progress.finished()
    assert is_healthy(progress, lambda: 0, stall_s=0.0)
    assert not is_healthy(progress, lambda: 3, stall_s=0.0)  # jobs wait, none taken


def test_an_unreachable_broker_is_not_healthy() -> None:
    def depth() -> int:
        raise ConnectionError("broker down")

    assert not is_healthy(Progress(), depth, stall_s=0.0)


def test_a_batch_that_ran_counts_as_progress() -> None:
    progress = Progress()
    progress.started()
    progress.advanced()
    in_flight, since = progress.snapshot()
    assert in_flight == 1
    assert since < 60
