"""Re-enqueue instances that were committed but never enqueued.

The listener enqueues after the database commit; if the broker was down, or the process
died between commit and enqueue, the instance stays ``received``. Every
``reconcile_interval_s`` this loop enqueues those older than ``reconcile_grace_s`` (the
grace keeps it from racing the handler's own enqueue) and marks them queued. It also
re-enqueues instances left ``processing`` longer than ``stale_processing_s`` (a worker
lost the job and could not even record a failure). A duplicate job is harmless: the
worker's writes are idempotent.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlalchemy import Engine

from cxr_db import repository as repo
from cxr_queue import ScoreJob
from dicom_listener.enqueue import enqueue_instance

logger = logging.getLogger(__name__)


class Reconciler:
    """A daemon thread running :meth:`run_once` every ``interval_s`` until stopped."""

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
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.stale_processing_s = stale_processing_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cxr-reconciler", daemon=True)

    def run_once(self) -> int:
        """One pass: enqueue every instance still ``received`` after the grace period.

        Returns how many were enqueued. Stops at the first broker (or database) failure
        (the next pass tries again)."""
        pending = repo.unenqueued_instances(self.engine, older_than_s=self.grace_s)
        stale = repo.stale_processing_instances(self.engine, self.stale_processing_s)
        done = 0
        for item in [*pending, *stale]:
            job = ScoreJob.model_validate(item, from_attributes=True)
            try:
                enqueue_instance(self.engine, self.celery_app, self.queue_name, job)
            except Exception as exc:  # noqa: BLE001 - broker errors come in many types
                logger.warning("reconciler: cannot enqueue (%s)", type(exc).__name__)
                break
            done += 1
        if done:
            logger.info("reconciler re-enqueued %d instance(s)", done)
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; next pass retries
                logger.warning("reconciler pass failed (%s)", type(exc).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
