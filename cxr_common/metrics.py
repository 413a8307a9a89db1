"""Prometheus metrics, defined once: names, help texts, label names, buckets and the fixed
set of reason categories; plus the one way a process serves its own metrics on a port.

Three places expose them (README "Metrics"):

* the web app's ``/metrics`` (``worklist.metrics_route``): the pipeline as the database
  and the broker see it, computed at scrape time (``worklist.metrics_collector.PipelineCollector``);
* the listener's port (``CXR_METRICS_PORT``, ``dicom_listener.metrics``): C-STORE
  outcomes and associations of that process;
* each worker's port (``CXR_METRICS_PORT``, ``worker.metrics``): batches, batch latency
  and jobs of that process.

A port per process, not prometheus-client's multiprocess mode: a worker is one process
(Celery's ``threads`` pool) and compose runs each listener and worker in its own
container, so every process serves its own registry and Prometheus labels it by target.

Label values are never free text: a reason becomes one of the categories below (first
matching pattern wins, else ``other``); statuses are DICOM status codes or enum values;
no UID, accession number or patient data is ever a label value.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (without the ``_total``/``_info`` suffix prometheus-client adds
    for counters and info metrics), help text and label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


# --------------------------------------------------------------------------- buckets

#: Turnaround (last instance of a study received → its score written), in seconds.
TURNAROUND_BUCKETS_S: Final = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Decode and (batched) inference time of one instance or batch, in seconds.
SCORING_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Images per batch (the worker's largest batch is 256).
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)

#: Time to read (a study's first instance received → its first answer), in seconds.
TIME_TO_READ_BUCKETS_S: Final = (
    60.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    259200.0,
)

#: The database-backed worker heartbeats cover instances received in this window (README
#: "Metrics"); the histograms are cumulative over every row.
HISTOGRAM_WINDOW_S: Final = 24 * 3600

# --------------------------------------------------------------------------- web /metrics

INSTANCES_RECEIVED = MetricSpec(
    "cxr_instances_received",
    "Instances recorded by the listener, all time (count of instance rows).",
)
INSTANCES_SCORED = MetricSpec(
    "cxr_instances_scored",
    "Instances scored, all time (instance rows with status done).",
)
INSTANCES_FAILED = MetricSpec(
    "cxr_instances_failed",
    "Instances failed, all time, by reason category (rows with status failed; a requeued "
    "instance leaves this count, which rate() reads as a reset).",
    ("reason",),
)
INSTANCES_NOT_ELIGIBLE = MetricSpec(
    "cxr_instances_not_eligible",
    "Instances not eligible for scoring, all time, by reason category (rows with status "
    "not_eligible).",
    ("reason",),
)
INSTANCES_BY_STATUS = MetricSpec(
    "cxr_instances",
    "Instances now in each status (received, queued, processing, done, not_eligible, failed).",
    ("status",),
)
OLDEST_PENDING_AGE = MetricSpec(
    "cxr_oldest_pending_age_seconds",
    "Age of the oldest instance still received, queued or processing (0 when none): "
    "a study waiting too long for its score.",
)
QUEUE_DEPTH = MetricSpec(
    "cxr_queue_depth",
    "Scoring jobs waiting on the broker (Redis LLEN of the queue list).",
    ("queue",),
)
JOBS_IN_FLIGHT = MetricSpec(
    "cxr_jobs_in_flight",
    "Instances a worker is scoring now (status processing).",
)
SCORING_DECODE = MetricSpec(
    "cxr_scoring_decode_seconds",
    "Read + decode + preprocess time per scored instance (predictions.decode_ms), every "
    "scored instance (cumulative: histogram_quantile() over rate()).",
)
SCORING_INFERENCE = MetricSpec(
    "cxr_scoring_inference_seconds",
    "Model run time of the batch each instance was scored in (predictions.inference_ms), "
    "every scored instance (cumulative: histogram_quantile() over rate()).",
)
TURNAROUND = MetricSpec(
    "cxr_turnaround_seconds",
    "Per study: last instance received to its last score written, for studies with every "
    "instance final and one scored (cumulative: histogram_quantile() over rate()).",
)
MODEL = MetricSpec(
    "cxr_model",
    "The registry's active model and its shadow models (the models table, read at scrape "
    "time: an activation or a rollback shows at the next scrape).",
    ("model_name", "model_version", "calibration_version", "role"),
)
DRIFT_PSI = MetricSpec(
    "cxr_drift_psi",
    "Population stability index of the last 24 hours against the active model's drift "
    "reference, by kind: score, eligibility (mix of scored/not eligible/failed) and "
    "population (mix of in_scope/outside/unknown). Absent where it cannot be measured "
    "(no reference, or fewer than 30 values).",
    ("kind",),
)
WORKER_LAST_PREDICTION_AGE = MetricSpec(
    "cxr_worker_last_prediction_age_seconds",
    "Heartbeat from the database (it has no heartbeat table): seconds since each worker "
    "(predictions.worker_id, host:pid) last wrote a prediction, workers seen on instances "
    "received in the last 24 h.",
    ("worker",),
)
WORKER_LAST_CLAIM_AGE = MetricSpec(
    "cxr_worker_last_claim_age_seconds",
    "Heartbeat from the database: seconds since each worker (instances.lease_owner, "
    "host:pid) claimed an instance it is still processing; absent when the schema has "
    "no lease owner.",
    ("worker",),
)
TIME_TO_READ = MetricSpec(
    "cxr_time_to_read_seconds",
    "Per answered study: first instance received to first answer, by whether the model "
    "flagged it (cumulative: histogram_quantile() over rate()).",
    ("flagged",),
)
FLAGGED_UNREAD_OLDEST = MetricSpec(
    "cxr_flagged_unread_oldest_seconds",
    "Seconds since the oldest flagged, still unread study arrived (0 when none).",
)
UNSCORED_OLDEST = MetricSpec(
    "cxr_unscored_oldest_seconds",
    "Seconds since the oldest study with an instance pending and no score yet arrived "
    "(0 when none).",
)
RESULT_SENDS = MetricSpec(
    "cxr_result_sends",
    "Attempts to store a study's result objects (SC, SR, SEG) on a PACS/RIS destination, all "
    "time, by outcome: sent or failed.",
    ("outcome",),
)
HL7_SENDS = MetricSpec(
    "cxr_hl7_sends",
    "Attempts to deliver a study's HL7 ORU^R01 to a RIS (MLLP receiver), all time, by "
    "outcome: accepted (AA) or failed (AE, AR, no or unusable ACK).",
    ("outcome",),
)
RESULT_STUDIES = MetricSpec(
    "cxr_result_studies",
    "Studies now in each result state: receiving, complete, results_sent, results_failed.",
    ("state",),
)
RESULTS_UNSENT = MetricSpec(
    "cxr_results_unsent",
    "Complete studies whose results job was enqueued and not yet sent or failed (the "
    "results queue as the database sees it).",
)
RESULTS_OLDEST_UNSENT = MetricSpec(
    "cxr_results_oldest_unsent_seconds",
    "Seconds since the oldest enqueued, not yet sent study completed (0 when none).",
)
SIGN_IN_FAILURES = MetricSpec(
    "cxr_sign_in_failures",
    "Failed sign-ins, all time (audit log sign_in_failed: wrong password, unknown user, "
    "locked or disabled account).",
)
LOCKOUTS = MetricSpec(
    "cxr_account_lockouts",
    "Accounts locked after too many wrong passwords, all time (audit log account_locked).",
)
ACCOUNTS_LOCKED = MetricSpec("cxr_accounts_locked", "Accounts locked now.")
DATABASE_UP = MetricSpec(
    "cxr_database_up", "1 when Postgres answered this scrape's queries, else 0."
)
BROKER_UP = MetricSpec("cxr_broker_up", "1 when Redis answered this scrape's LLEN, else 0.")

# --------------------------------------------------------------------------- listener

LISTENER_STORES = MetricSpec(
    "cxr_listener_stores",
    "C-STORE requests answered by this listener, by response status (hex, e.g. 0x0000).",
    ("status",),
)
LISTENER_ASSOCIATIONS = MetricSpec(
    "cxr_listener_associations",
    "Associations of this listener by event: established, rejected, released, aborted.",
    ("event",),
)
LISTENER_CONNECTIONS_OPEN = MetricSpec(
    "cxr_listener_connections_open", "TCP connections this listener holds open now."
)

# --------------------------------------------------------------------------- worker

WORKER_BATCH_SIZE = MetricSpec(
    "cxr_worker_batch_size", "Images per batch this worker ran through the model."
)
WORKER_BATCH_SECONDS = MetricSpec(
    "cxr_worker_batch_seconds",
    "Time this worker took to score one batch (model run, Grad-CAM included).",
)
WORKER_JOBS = MetricSpec(
    "cxr_worker_jobs",
    "Scoring jobs this worker finished, by outcome: done, not_eligible, failed, skipped, "
    "invalid (the task's result), retry (a transient error, retried) or error (raised).",
    ("outcome",),
)
WORKER_MODEL = MetricSpec(
    "cxr_worker_model",
    "The model this worker process loaded.",
    ("model_name", "model_version", "calibration_version", "device"),
)

# ------------------------------------------------ escalation (issue 19; web /metrics, DB-backed)
# Read with cxr_db.escalations.store.metric_counts; the collector exposes ESCALATIONS as a
# counter (cxr_escalations_total{outcome}) and ESCALATIONS_OPEN as a gauge.

ESCALATIONS = MetricSpec(
    "cxr_escalations",
    "Escalations of flagged studies left unread, all time, by delivery outcome: delivered "
    "(every webhook answered 2xx), failed (a webhook was given up), pending (still being "
    "delivered or retried), cancelled (the study was opened first), none (no webhook "
    "configured).",
    ("outcome",),
)
ESCALATIONS_OPEN = MetricSpec(
    "cxr_escalations_open",
    "Flagged studies escalated and still unread (open escalations, as the ops page lists).",
)

# --------------------------------------------------------------------------- reasons

OTHER = "other"

#: Failed reasons → category: SQL ``ILIKE`` patterns, first match wins, else ``other``.
#: The reasons are written by ``worker.pipeline``/``worker.tasks`` and the decode limits.
FAILED_REASON_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    ("decode_limit", "%(decode limit %"),
    ("unreadable_dicom", "unreadable DICOM%"),
    ("unreadable_dicom", "DICOM header cannot be parsed%"),
    ("unreadable_dicom", "File Meta has no Transfer Syntax%"),
    ("unreadable_dicom", "Deflated data set is corrupt%"),
    ("pixel_data", "pixel data could not be decoded%"),
    ("pixel_data", "encapsulated Pixel Data%"),
    ("image_attributes", "%check the modality's export%"),
    ("file_missing", "stored DICOM file not found%"),
    ("retries_exhausted", "gave up after%"),
    ("worker_crashed", "a worker stopped%"),
    ("timeout", "scoring did not finish%"),
    ("internal_error", "internal error%"),
)
#: Not-eligible reasons (``cxr_imaging.eligibility``) → category, as above.
NOT_ELIGIBLE_REASON_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    ("modality", "modality %"),
    ("body_part", "body part %"),
    ("lateral_view", "lateral view%"),
    ("image_size", "image % is too small%"),
)


@lru_cache(maxsize=64)
def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def reason_category(reason: str | None, patterns: Sequence[tuple[str, str]]) -> str:
    """The category of ``reason`` under ``patterns`` (the SQL ``CASE`` in
    ``cxr_db.instances.stats`` computes the same in the database)."""
    if reason:
        for category, pattern in patterns:
            if _like_regex(pattern).fullmatch(reason):
                return category
    return OTHER


def reason_categories(patterns: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """Every category ``patterns`` can give, ``other`` included, in first-seen order."""
    return tuple(dict.fromkeys([*(category for category, _ in patterns), OTHER]))


# --------------------------------------------------------------------------- serving


@dataclass
class MetricsServer:
    """A process's metrics HTTP server (``GET /metrics``); ``port`` is the bound one."""

    host: str
    port: int
    server: WSGIServer
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    host: str, port: int | None, what: str, registry: CollectorRegistry = REGISTRY
) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port`` in a daemon thread (``port`` None = off; 0 = a
    free port). A port that cannot be bound is logged and metrics stay off: metrics never
    stop a listener or a worker from doing its work."""
    if port is None:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        hint = " (taken: give each process its own CXR_METRICS_PORT)"
        logger.error(
            "%s metrics: cannot listen on %s:%d: %s%s",
            what,
            host,
            port,
            exc.strerror or type(exc).__name__,
            hint if exc.errno == errno.EADDRINUSE else "",
        )
        return None
    bound = int(server.server_port)
    logger.info("%s metrics on http://%s:%d/metrics", what, host, bound)
    return MetricsServer(host, bound, server, thread)
