"""Study completeness: the periodic job that marks quiet studies complete and enqueues
their results.

A study is complete when no new instance arrived for ``CXR_STUDY_QUIET_S`` seconds (the
DICOM-router convention: Orthanc's StableAge, mercure) and none of its instances is still
pending (received, queued, processing). Postgres decides it
(:func:`cxr_db.results.complete_quiet_studies`: one ``UPDATE ... FOR UPDATE SKIP LOCKED
RETURNING``), so several scheduler processes can run this loop side by side and each study
version is completed, and its job enqueued, by exactly one of them.

Each pass, every ``interval_s``:

1. complete the quiet studies and enqueue one results job per (study, result version) on
   the results queue, after the commit; then note the job as enqueued;
2. re-enqueue complete studies whose job was never enqueued (broker down, or this process
   died in between) once they have waited ``grace_s``. A duplicate job is harmless: the
   sender checks what was already sent.

A later instance reopens the study (Postgres' insert trigger: ``receiving``, result
version + 1), and the next quiet period completes the new version.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import Engine

from cxr_db.results import store as results_db
from cxr_queue import ResultsJob, enqueue_results
from cxr_scheduler.periodic import PeriodicJob

logger = logging.getLogger(__name__)


class CompletenessMonitor(PeriodicJob):
    """A daemon thread running :meth:`run_once` every ``interval_s`` until stopped."""

    name = "completeness"

    def __init__(
        self,
        engine: Engine,
        celery_app: Celery,
        queue_name: str,
        quiet_s: float,
        interval_s: float,
        grace_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.celery_app = celery_app
        self.queue_name = queue_name
        self.quiet_s = quiet_s
        super().__init__(interval_s)
        self.grace_s = grace_s if grace_s is not None else max(30.0, 3 * interval_s)

    def _enqueue(self, studies: list[results_db.CompletedStudy]) -> int:
        done = 0
        for study in studies:
            job = ResultsJob(
                study_id=study.study_id,
                study_instance_uid=study.study_instance_uid,
                result_version=study.result_version,
            )
            try:
                enqueue_results(self.celery_app, job, self.queue_name)
            except Exception as exc:  # noqa: BLE001 - broker errors come in many types
                logger.warning(
                    "cannot enqueue results of study_instance_uid=%s (%s): a later pass "
                    "re-enqueues them",
                    study.study_instance_uid,
                    type(exc).__name__,
                )
                self.pass_failed = True
                break
            results_db.mark_results_enqueued(self.engine, study)
            done += 1
        return done

    def run_once(self) -> int:
        """One pass; returns how many results jobs were enqueued."""
        completed = results_db.complete_quiet_studies(self.engine, self.quiet_s)
        for study in completed:
            logger.info(
                "study complete: study_instance_uid=%s result_version=%d",
                study.study_instance_uid,
                study.result_version,
            )
        done = self._enqueue(completed)
        stale = results_db.unenqueued_complete_studies(self.engine, self.grace_s)
        if stale:
            logger.info("re-enqueueing the results of %d complete study(ies)", len(stale))
            done += self._enqueue(stale)
        return done
