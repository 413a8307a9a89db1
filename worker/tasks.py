"""The Celery task: validate the payload, run the pipeline, retry only what may recover.

Transient errors are retried with jittered exponential backoff, capped at the reconciler's
``MAX_RETRY_COUNTDOWN_S`` (``cxr_queue.retries``, shared with the results task); after the
last retry, and
for any permanent or unexpected error, the instance is written as ``failed`` with a reason,
so it stays visible on the worklist instead of vanishing. A database outage never writes
``failed``: after the last retry the row stays pending and the listener's reconciler
re-enqueues it (issue 12, defect 1a).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from cxr_common.errors import TransientError
from cxr_db.instances import writes as repo
from cxr_queue import MAX_RETRY_COUNTDOWN_S, SCORE_TASK, ScoreJob
from cxr_queue.retries import RetryPolicy, retries_so_far, retry_later
from worker.outcomes import JobOutcome
from worker.pipeline import DatabaseUnavailableError, ScoringRuntime

log = logging.getLogger(__name__)

MAX_BACKOFF_S = MAX_RETRY_COUNTDOWN_S


def retry_policy(max_retries: int) -> RetryPolicy:
    """Scoring retries: 1, 2, 4, ... s (jittered), never longer than the reconciler waits."""
    return RetryPolicy(max_retries=max_retries, max_backoff_s=MAX_BACKOFF_S)


def register_tasks(app: Celery, runtime: Callable[[], ScoringRuntime], max_retries: int) -> Task:
    """Register ``cxr.score_instance`` on ``app``; ``runtime`` returns the loaded runtime."""
    policy = retry_policy(max_retries)

    @app.task(  # type: ignore[untyped-decorator]
        name=SCORE_TASK, bind=True, acks_late=True, max_retries=max_retries
    )
    def score_instance(self: Task, job: dict[str, Any]) -> str:
        try:
            parsed = ScoreJob.model_validate(job)
        except ValidationError:
            log.error("dropped a job with an invalid payload (fields: %s)", sorted(job))
            return JobOutcome.INVALID.value
        rt = runtime()
        try:
            return rt.process(parsed).status.value
        except TransientError as exc:
            retries = retries_so_far(self)
            if policy.exhausted(retries):
                if isinstance(exc, DatabaseUnavailableError):
                    log.error(
                        "database unavailable through %d attempts: instance %d stays pending; "
                        "the reconciler re-enqueues it once the database is back",
                        retries + 1,
                        parsed.instance_id,
                    )
                    return JobOutcome.DEFERRED.value
                reason = (
                    f"gave up after {retries + 1} attempts: {exc}; once that is fixed, requeue "
                    "with `cxr-triage requeue --failed`, and read the image without a score "
                    "meanwhile"
                )
                _record_failed(rt, parsed, reason)
                return JobOutcome.FAILED.value
            log.warning("transient error, retry %d: %s", retries + 1, exc)
            retry_later(self, exc, policy)
        except Exception as exc:
            log.exception("unexpected error scoring instance %d", parsed.instance_id)
            _record_failed(
                rt,
                parsed,
                f"internal error ({type(exc).__name__}): read the image without a score; "
                "contact support with the worker logs, and requeue with "
                "`cxr-triage requeue --failed` once it is fixed",
            )
            return JobOutcome.FAILED.value

    return score_instance


def _record_failed(rt: ScoringRuntime, job: ScoreJob, reason: str) -> None:
    """Record the failure; with the database down, leave the row pending for the
    reconciler (its lease lapses, or it was given back as queued)."""
    try:
        repo.record_failed(rt.engine, job.instance_id, reason)
    except DBAPIError:
        log.error(
            "could not record failure of instance %d: database unavailable; the reconciler "
            "re-enqueues it",
            job.instance_id,
        )
