"""The scheduler's heartbeat follows its periodic jobs: healthy while they run and their
passes succeed, not when passes keep failing or the job stopped."""

from __future__ import annotations

import pytest

from cxr_scheduler import periodic
from cxr_scheduler.periodic import PeriodicJob
from tests.faults import wait_for


class _Job(PeriodicJob):
    name = "test job"

    def __init__(self, fail: bool | str) -> None:
        super().__init__(interval_s=0.01)
        self.fail = fail
        self.passes = 0

    def run_once(self) -> int:
        self.passes += 1
        if self.fail == "raise":
            raise ConnectionError("broker down")
        self.pass_failed = bool(self.fail)
        return 0


@pytest.mark.parametrize("fail", [True, "raise"])
def test_a_job_whose_passes_fail_is_not_healthy(
    monkeypatch: pytest.MonkeyPatch, fail: bool | str
) -> None:
    monkeypatch.setattr(periodic, "HEALTHY_WITHIN_S", 0.05)
    job = _Job(fail)
    job.start()
    try:
        assert job.healthy()  # just started
        wait_for("the job unhealthy", lambda: not job.healthy(), timeout_s=10)
        assert job.passes >= 2
    finally:
        job.stop()


def test_a_job_whose_passes_succeed_stays_healthy_until_stopped() -> None:
    job = _Job(False)
    job.start()
    wait_for("ten passes", lambda: job.passes >= 10, timeout_s=10)
    assert job.healthy()
    job.stop()
    assert not job.healthy()
