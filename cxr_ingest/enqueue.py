"""Enqueue the scoring job of a committed instance: ingest's way and the reconciler's."""

from __future__ import annotations

from celery import Celery
from sqlalchemy import Engine

from cxr_db.instances import writes as repo
from cxr_queue import Lane, ScoreJob, enqueue_score


def enqueue_instance(
    engine: Engine, celery_app: Celery, queue_name: str, job: ScoreJob, lane: str = Lane.NORMAL
) -> None:
    """Publish ``job`` into ``lane`` (after the instance's row, which keeps the lane, is
    committed), then mark the row queued.

    Raises whatever the broker or the database raises: the caller decides whether the
    reconciler picks it up later (ingest) or the pass stops here (the reconciler).
    A job published twice is harmless: the worker's writes are idempotent."""
    enqueue_score(celery_app, job, queue_name, lane)
    repo.mark_enqueued(engine, job.instance_id)
