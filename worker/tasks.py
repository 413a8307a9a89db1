"""The Celery task: validate the payload, run the pipeline, retry only what may recover.

Transient errors are retried with exponential backoff (capped); after the last retry, and
for any permanent or unexpected error, the instance is written as ``failed`` with a reason,
so it stays visible on the worklist instead of vanishing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from cxr_common.errors import TransientError
from cxr_db import repository as repo
from cxr_queue import SCORE_TASK, ScoreJob
from worker.outcomes import JobOutcome
from worker.pipeline import ScoringRuntime

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60


def backoff_seconds(retries: int) -> int:
    """1, 2, 4, ... seconds, capped at ``MAX_BACKOFF_S``."""
    return int(min(2**retries, MAX_BACKOFF_S))


def register_tasks(app: Celery, runtime: Callable[[], ScoringRuntime], max_retries: int) -> Task:
    """Register ``cxr.score_instance`` on ``app``; ``runtime`` returns the loaded runtime."""

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
            retries = int(self.request.retries or 0)
            if retries >= max_retries:
                reason = f"gave up after {retries + 1} attempts: {exc}"
                _record_failed(rt, parsed, reason)
                return JobOutcome.FAILED.value
            log.warning("transient error, retry %d: %s", retries + 1, exc)
            raise self.retry(exc=exc, countdown=backoff_seconds(retries)) from exc
        except Exception as exc:
            log.exception("unexpected error scoring instance %d", parsed.instance_id)
            _record_failed(rt, parsed, f"internal error ({type(exc).__name__}); see worker logs")
            return JobOutcome.FAILED.value

    return score_instance


def _record_failed(rt: ScoringRuntime, job: ScoreJob, reason: str) -> None:
    try:
        repo.record_failed(rt.engine, job.instance_id, reason)
    except DBAPIError:
        log.error("could not record failure of instance %d: database unavailable", job.instance_id)
        raise
