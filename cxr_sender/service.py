"""Start the ``results`` role: ``cxr-triage send-results`` (compose service ``results``)."""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from cxr_common.settings import ResultSettings
from cxr_db import make_engine
from cxr_queue import make_celery
from cxr_queue.runner import Consumer, broker_reachable, run_consumer
from cxr_sender.escalation import EscalationDelivery

log = logging.getLogger(__name__)

#: One thread per job: the jobs are few (one per complete study) and mostly wait on PACS.
CONCURRENCY = 4


def run_results_sender(settings: ResultSettings) -> int:
    """Consume the results queue only (no model is loaded) until SIGTERM/SIGINT.

    A process of its own, so that C-STOREs waiting on a slow or absent PACS never hold a
    scoring thread: scoring goes on whatever the PACS does. The heartbeat is touched
    while the broker answers."""
    from cxr_results import parse_destinations
    from cxr_sender.results import ResultsRuntime, register_results_task

    destinations = parse_destinations(settings.result_destinations)  # fail fast when malformed
    log.info(
        "results to %s as %s",
        ", ".join(map(str, destinations)) or "no destination (nothing is sent)",
        settings.result_calling_ae_title,
    )
    from cxr_hl7 import parse_hl7_destinations

    hl7 = parse_hl7_destinations(settings.hl7_destinations)  # fail fast when malformed
    log.info("HL7 results to %s", ", ".join(map(str, hl7)) or "no receiver (no HL7 is sent)")
    app = make_celery(settings.broker_url_value(), settings.results_queue_name)
    runtime = ResultsRuntime(
        make_engine(settings.database_url_value(), pool_size=CONCURRENCY + 2), settings
    )
    register_results_task(
        app, lambda: runtime, settings.result_max_retries, settings.result_retry_max_backoff_s
    )
    escalations = start_escalation_delivery(settings, runtime.engine)
    consumer = Consumer(
        role="results",
        queues=[settings.results_queue_name],
        concurrency=CONCURRENCY,
        log_level=settings.log_level,
        heartbeat_file=settings.result_heartbeat_file,
        healthy=broker_reachable(app, settings.results_queue_name),
    )

    def close() -> None:
        escalations.stop()
        runtime.close()

    return run_consumer(app, consumer, close=close)


def start_escalation_delivery(settings: ResultSettings, engine: Engine) -> EscalationDelivery:
    """Deliver the escalation outbox in a daemon thread of this process (see
    ``cxr_sender.escalation``); stop it with ``.stop()``."""
    delivery = EscalationDelivery(
        engine,
        timeout_s=settings.escalation_timeout_s,
        max_attempts=settings.escalation_max_attempts,
        max_backoff_s=settings.escalation_retry_max_backoff_s,
        poll_s=settings.escalation_poll_s,
    )
    delivery.start()
    log.info(
        "escalation webhooks: polled every %.0f s, up to %d attempt(s)",
        settings.escalation_poll_s,
        settings.escalation_max_attempts,
    )
    return delivery
