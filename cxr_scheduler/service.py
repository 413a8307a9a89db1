"""Start the ``scheduler`` role: in-process (tests) or blocking (``cxr-triage schedule``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine

from cxr_common.lifecycle import stop_on_signals
from cxr_common.settings import SchedulerSettings
from cxr_queue.runner import start_heartbeat
from cxr_scheduler.completeness import CompletenessMonitor
from cxr_scheduler.escalation import EscalationMonitor
from cxr_scheduler.reconciler import Reconciler

log = logging.getLogger(__name__)


@dataclass
class SchedulerHandle:
    """The running periodic jobs."""

    reconciler: Reconciler
    completeness: CompletenessMonitor
    escalation: EscalationMonitor

    def healthy(self) -> bool:
        """Every job runs and passed recently."""
        return (
            self.reconciler.healthy() and self.completeness.healthy() and self.escalation.healthy()
        )

    def shutdown(self) -> None:
        self.reconciler.stop()
        self.completeness.stop()
        self.escalation.stop()


def start_scheduler(
    settings: SchedulerSettings, engine: Engine, celery_app: Celery
) -> SchedulerHandle:
    """Start the reconciler (scoring queue), the completeness monitor (results queue) and
    the escalation monitor (webhook outbox) in daemon threads; return at once."""
    reconciler = Reconciler(
        engine,
        celery_app,
        settings.queue_name,
        interval_s=settings.reconcile_interval_s,
        grace_s=settings.reconcile_grace_s,
        stale_processing_s=settings.stale_processing_s,
    )
    completeness = CompletenessMonitor(
        engine,
        celery_app,
        settings.results_queue_name,
        quiet_s=settings.study_quiet_s,
        interval_s=settings.completeness_interval_s,
    )
    escalation = EscalationMonitor(
        engine,
        after_s=settings.escalate_after_s,
        repeat_s=settings.escalate_repeat_s,
        webhooks=settings.escalation_webhook_urls,
        base_url=settings.web_base_url,
        interval_s=settings.escalation_interval_s,
    )
    reconciler.start()
    completeness.start()
    escalation.start()
    log.info(
        "scheduler: reconciler every %.0f s (grace %.0f s), completeness every %.0f s "
        "(quiet %.0f s)",
        settings.reconcile_interval_s,
        settings.reconcile_grace_s,
        settings.completeness_interval_s,
        settings.study_quiet_s,
    )
    log.info(
        "scheduler: escalation every %.0f s (after %.0f s unread, repeat %.0f s, %d webhook(s))",
        settings.escalation_interval_s,
        settings.escalate_after_s,
        settings.escalate_repeat_s,
        len(settings.escalation_webhook_urls),
    )
    return SchedulerHandle(reconciler, completeness, escalation)


def run_scheduler(settings: SchedulerSettings) -> int:
    """Run the periodic jobs until SIGINT/SIGTERM, then stop cleanly. The heartbeat file
    (``CXR_SCHEDULER_HEARTBEAT_FILE``) is touched while both jobs pass."""
    from cxr_db import make_engine
    from cxr_queue import make_celery

    engine = make_engine(settings.database_url_value(), pool_size=2)
    celery_app = make_celery(settings.broker_url_value(), settings.queue_name)
    try:
        with stop_on_signals("the scheduler") as stop:
            handle = start_scheduler(settings, engine, celery_app)
            beat = start_heartbeat(
                settings.scheduler_heartbeat_file, handle.healthy, role="scheduler"
            )
            try:
                stop.wait()
            finally:
                beat.set()
                handle.shutdown()
        return 0
    finally:
        engine.dispose()
