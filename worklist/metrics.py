"""``GET /metrics`` (role ``ops``, or an ops API token): Prometheus text format.

This is the one place the web app's metrics are exposed. Today it serves
prometheus-client's default registry (process and Python collectors of this process);
the pipeline's counters, queue depth, latency and turnaround histograms register
themselves in that registry (or a multiprocess collector) and appear here unchanged.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def exposition() -> tuple[bytes, str]:
    """The current metrics and their content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
