"""Put back in work every instance that is pending but that no worker will pick up.

Three sweeps every ``reconcile_interval_s`` (issue 12), each a ``FOR UPDATE SKIP
LOCKED`` pick that stamps the rows in the same statement, so several schedulers (and so
several reconcilers) never re-enqueue one row twice within a grace period:

* ``received`` for longer than ``grace_s``: committed but never enqueued (the broker was
  down, or the listener died between commit and enqueue);
* ``queued`` since longer than ``grace_s`` with no message on the broker (neither
  waiting nor delivered-unacknowledged): Redis restarted empty, or a worker
  acknowledged the job without a final status because Postgres was down (defects 1a,
  1b); with only a delivered message, after a retry's longest countdown as well (a
  worker reserved it and died before claiming it);
* ``processing`` with an expired lease: the worker died (``kill -9``, OOM) or lost the
  database while holding it (defect 3); with no lease at all (a row claimed before
  leases existed) after ``stale_processing_s``.

Each job goes back into the lane the row was recorded with (``instances.lane``, see
``cxr_queue.lanes``); the broker snapshot covers every lane's queue.

The job is published after the commit. A duplicate is harmless: only one claim can hold
a row's lease, and predictions are upserted. If the broker cannot be reached the row
stays stamped and pending, and a later pass tries again.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import Engine

from cxr_db.instances import writes as repo
from cxr_ingest.enqueue import enqueue_instance
from cxr_queue import (
    MAX_RETRY_COUNTDOWN_S,
    ScoreJob,
    enqueue_score,
    lane_queues,
    live_instance_ids,
)
from cxr_scheduler.periodic import PeriodicJob

logger = logging.getLogger(__name__)


class Reconciler(PeriodicJob):
    """A daemon thread running :meth:`run_once` every ``interval_s`` until stopped."""

    name = "reconciler"

    def __init__(
        self,
        engine: Engine,
        celery_app: Celery,
        queue_name: str,
        interval_s: float,
        grace_s: float,
        stale_processing_s: float = 1800.0,
    ) -> None:
        self.engine = engine
        self.celery_app = celery_app
        self.queue_name = queue_name
        super().__init__(interval_s)
        self.grace_s = grace_s
        self.stale_processing_s = stale_processing_s

    def run_once(self) -> int:
        """One pass of the three sweeps; returns how many jobs were published. Stops at
        the first broker failure (what was stamped is retried by a later pass)."""
        done = 0
        try:
            # The broker snapshot first: a row this pass re-enqueues is then never taken
            # for an orphan by the same pass.
            live = live_instance_ids(self.celery_app, *lane_queues(self.queue_name))
            orphaned = repo.take_orphaned_queued(
                self.engine,
                self.grace_s,
                live.waiting,
                live.unacked,
                unacked_older_than_s=self.grace_s + MAX_RETRY_COUNTDOWN_S,
            )
            expired = repo.take_expired_leases(self.engine, self.stale_processing_s)
            for item in [*orphaned, *expired]:
                enqueue_score(self.celery_app, self._job(item), self.queue_name, item.lane)
                done += 1
            for item in repo.take_unenqueued(self.engine, older_than_s=self.grace_s):
                # as the listener does after its commit: publish, then mark the row queued
                enqueue_instance(
                    self.engine, self.celery_app, self.queue_name, self._job(item), item.lane
                )
                done += 1
        except Exception as exc:  # noqa: BLE001 - broker errors come in many types
            logger.warning("reconciler: cannot enqueue (%s)", type(exc).__name__)
            self.pass_failed = True
        if done:
            logger.info("reconciler re-enqueued %d instance(s)", done)
        return done

    @staticmethod
    def _job(item: repo.PendingJob) -> ScoreJob:
        return ScoreJob(
            instance_id=item.instance_id,
            sop_instance_uid=item.sop_instance_uid,
            storage_uri=item.storage_uri,
        )
