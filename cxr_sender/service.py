"""Start the ``results`` role: ``cxr-triage send-results`` (compose service ``results``)."""

from __future__ import annotations

import logging

from cxr_common.settings import ResultSettings
from cxr_db import make_engine
from cxr_queue import make_celery
from cxr_queue.runner import Consumer, broker_reachable, run_consumer

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
    app = make_celery(settings.broker_url_value(), settings.results_queue_name)
    runtime = ResultsRuntime(
        make_engine(settings.database_url_value(), pool_size=CONCURRENCY + 2), settings
    )
    register_results_task(
        app, lambda: runtime, settings.result_max_retries, settings.result_retry_max_backoff_s
    )
    consumer = Consumer(
        role="results",
        queues=[settings.results_queue_name],
        concurrency=CONCURRENCY,
        log_level=settings.log_level,
        heartbeat_file=settings.result_heartbeat_file,
        healthy=broker_reachable(app, settings.results_queue_name),
    )
    return run_consumer(app, consumer, close=runtime.close)
