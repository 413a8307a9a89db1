"""Task name, payload and Celery configuration shared by producer and consumers."""

from __future__ import annotations

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from cxr_common.settings import BROKER_VISIBILITY_TIMEOUT_S as VISIBILITY_TIMEOUT_S
from cxr_queue.lanes import QUEUE_ORDER_STRATEGY, Lane, lane_queue

SCORE_TASK = "cxr.score_instance"

#: The longest countdown before a retried job runs again (the worker's backoff cap); a
#: job delivered but unacknowledged for longer, whose row is still ``queued``, was held
#: by a worker that died.
MAX_RETRY_COUNTDOWN_S = 60

#: Seconds a broker read or write may block, and a connect may take.
BROKER_SOCKET_TIMEOUT_S = 30
BROKER_CONNECT_TIMEOUT_S = 5


class ScoreJob(BaseModel):
    """Score one stored instance. Small, typed, and free of patient data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: int = Field(ge=1)
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    storage_uri: str = Field(min_length=1)


def make_celery(broker_url: str, queue_name: str = "cxr-score", name: str = "cxr-triage") -> Celery:
    """A Celery app configured for at-least-once, idempotent scoring jobs."""
    app = Celery(name, broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue_name,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # A partition must not block a thread for the OS TCP timeout (defect 8).
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
            # Urgent lanes first in every BRPOP, with a starvation bound (cxr_queue.lanes).
            "queue_order_strategy": QUEUE_ORDER_STRATEGY,
        },
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a worker waits out a broker outage
        # The listener publishes from an association thread: fail fast, the reconciler
        # enqueues what could not be published.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )
    return app


def enqueue_score(
    app: Celery, job: ScoreJob, queue_name: str = "cxr-score", lane: str = Lane.NORMAL
) -> None:
    """Publish one scoring job into ``lane``'s queue of the scoring queue ``queue_name``
    (by task name; the producer needs no worker code)."""
    app.send_task(
        SCORE_TASK, kwargs={"job": job.model_dump()}, queue=lane_queue(queue_name, Lane(lane))
    )


# ------------------------------------------------------------- results back to PACS

RESULTS_TASK = "cxr.send_results"
#: The results queue: C-STOREs to PACS wait on networks, so they never share the
#: scoring queue (a PACS that is down never blocks scoring).
RESULTS_QUEUE = "cxr-results"


class ResultsJob(BaseModel):
    """Send the result objects of one result version of one complete study. IDs only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_id: int = Field(ge=1)
    study_instance_uid: str = Field(min_length=1, max_length=64)
    result_version: int = Field(ge=1)


def enqueue_results(app: Celery, job: ResultsJob, queue_name: str = RESULTS_QUEUE) -> None:
    """Publish one results job (by task name; the listener needs no worker code)."""
    app.send_task(RESULTS_TASK, kwargs={"job": job.model_dump()}, queue=queue_name)
