"""The scoring task's contract: payload validation and retry backoff."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr_db.instances.statuses import FINAL_STATUSES, InstanceStatus
from cxr_queue import MAX_RETRY_COUNTDOWN_S, SCORE_TASK, ScoreJob, make_celery
from worker.outcomes import JobOutcome
from worker.tasks import MAX_BACKOFF_S, register_tasks, retry_policy


def test_backoff_doubles_and_is_capped_within_the_reconcilers_wait() -> None:
    policy = retry_policy(max_retries=5)
    assert [policy.backoff_s(n) for n in range(4)] == [1, 2, 4, 8]
    assert policy.backoff_s(30) == MAX_BACKOFF_S <= MAX_RETRY_COUNTDOWN_S
    assert max(policy.countdown_s(30) for _ in range(200)) <= MAX_RETRY_COUNTDOWN_S


def test_job_payload_is_small_typed_and_strict() -> None:
    job = ScoreJob(instance_id=3, sop_instance_uid="1.2.3", storage_uri="file:///x/1.dcm")
    assert set(job.model_dump()) == {"instance_id", "sop_instance_uid", "storage_uri"}
    with pytest.raises(ValidationError):
        ScoreJob.model_validate({**job.model_dump(), "pixels": [1, 2, 3]})
    with pytest.raises(ValidationError):
        ScoreJob(instance_id=0, sop_instance_uid="1.2.3", storage_uri="file:///x")


def test_an_invalid_payload_is_dropped_without_touching_the_runtime() -> None:
    app = make_celery("redis://127.0.0.1:1/0", "unit")

    def no_runtime() -> object:
        raise AssertionError("runtime must not be loaded for an invalid job")

    task = register_tasks(app, no_runtime, max_retries=3)  # type: ignore[arg-type]
    assert task.name == SCORE_TASK
    assert task.run(job={"instance_id": "not-a-number"}) == JobOutcome.INVALID.value


def test_job_outcomes_name_the_final_statuses_and_two_that_write_no_row() -> None:
    statuses = {s.value for s in InstanceStatus}
    assert {o.value for o in JobOutcome if o.value in statuses} == {s.value for s in FINAL_STATUSES}
    assert {o for o in JobOutcome if o.value not in statuses} == {
        JobOutcome.SKIPPED,
        JobOutcome.INVALID,
        JobOutcome.DEFERRED,
    }


def test_broker_settings_give_at_least_once_delivery() -> None:
    conf = make_celery("redis://127.0.0.1:1/0", "unit").conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] >= 600


def test_broker_waits_are_bounded_and_a_worker_outlasts_an_outage() -> None:
    """Issue 12, defect 8: a partition must not block a thread for the OS TCP timeout."""
    conf = make_celery("redis://127.0.0.1:1/0", "unit").conf
    options = conf.broker_transport_options
    assert 0 < options["socket_timeout"] <= 60
    assert 0 < options["socket_connect_timeout"] <= 10
    assert conf.broker_connection_timeout <= 10
    assert conf.broker_connection_max_retries is None  # a worker waits, it does not exit
    assert conf.task_publish_retry_policy["max_retries"] <= 3  # the listener fails fast
