"""``cxr-triage demo`` runs no results sender: its listener's results jobs go to a queue of
the demo's own, which the demo drops when it stops (real Redis)."""

from __future__ import annotations

import socket

import pytest
import redis

from cxr_queue import ResultsJob, enqueue_results, make_celery
from cxr_triage.demo import CHILD_SETTINGS, demo_results_queue, discard_results_jobs
from tests.conftest import Services

pytestmark = pytest.mark.integration


def test_the_demos_results_jobs_stay_on_its_own_queue_and_are_dropped_at_the_end(
    services: Services,
) -> None:
    assert "results_queue_name" in CHILD_SETTINGS  # the listener gets the demo's queue
    queue = demo_results_queue()
    assert queue != demo_results_queue()  # one per run
    site_queue = f"{services.queue_name}-results"
    client = redis.Redis.from_url(services.broker_url)
    client.delete(queue, site_queue)
    app = make_celery(services.broker_url)
    job = ResultsJob(
        study_id=1, study_instance_uid="1.2.826.0.1.3680043.10.1024.9", result_version=1
    )
    enqueue_results(app, job, queue)
    enqueue_results(app, job, site_queue)  # a site's own job: not the demo's to drop
    assert client.llen(queue) == 1

    assert discard_results_jobs(services.broker_url, queue) == 1
    assert client.llen(queue) == 0
    assert client.llen(site_queue) == 1
    assert discard_results_jobs(services.broker_url, queue) == 0  # nothing left: no error
    client.delete(site_queue)
    client.close()


def test_a_broker_that_is_gone_at_the_end_is_no_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert discard_results_jobs(f"redis://127.0.0.1:{port}/0", demo_results_queue()) == 0
