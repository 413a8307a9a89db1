"""The listener's own metrics (``CXR_METRICS_PORT``): C-STORE outcomes by status code,
associations by event, open connections. Names and help in ``cxr_common.metrics``.

Wired in ``server.start_listener`` with two calls: :func:`counted` wraps the C-STORE
handler, :func:`event_handlers` adds the association events; :func:`serve` starts the
port. The metric objects live in prometheus-client's default registry, created on first
use (importing this module creates nothing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cache

from prometheus_client import Counter, Gauge
from pynetdicom import evt
from pynetdicom.events import Event

from cxr_common import metrics as m
from cxr_common.metrics import MetricsServer, serve_metrics
from cxr_common.settings import ListenerSettings

logger = logging.getLogger(__name__)

_lock = threading.Lock()


@cache
def _stores() -> Counter:
    return Counter(m.LISTENER_STORES.name, m.LISTENER_STORES.help, m.LISTENER_STORES.labels)


@cache
def _associations() -> Counter:
    spec = m.LISTENER_ASSOCIATIONS
    return Counter(spec.name, spec.help, spec.labels)


@cache
def _connections() -> Gauge:
    return Gauge(m.LISTENER_CONNECTIONS_OPEN.name, m.LISTENER_CONNECTIONS_OPEN.help)


def _create() -> None:
    with _lock:  # @cache alone may run a factory twice in two threads: a duplicate name
        _stores()
        _associations()
        _connections()


def status_label(status: int) -> str:
    """A DICOM status as its label value: ``0x0000``, ``0xA701``."""
    return f"0x{status & 0xFFFF:04X}"


def observe_store(status: int) -> None:
    """Count one C-STORE answer (never raises)."""
    try:
        _stores().labels(status_label(status)).inc()
    except Exception:
        logger.debug("C-STORE metric not counted", exc_info=True)


def counted(handler: Callable[[Event], int]) -> Callable[[Event], int]:
    """The C-STORE ``handler``, counting each status it answers."""

    def handle(event: Event) -> int:
        status = handler(event)
        observe_store(status)
        return status

    return handle


def _on_event(name: str) -> Callable[[Event], None]:
    def handle(_event: Event) -> None:
        try:
            _associations().labels(name).inc()
        except Exception:
            logger.debug("association metric not counted", exc_info=True)

    return handle


def _on_connection(delta: int) -> Callable[[Event], None]:
    def handle(_event: Event) -> None:
        try:
            _connections().inc(delta)
        except Exception:
            logger.debug("connection metric not counted", exc_info=True)

    return handle


def event_handlers() -> list[evt.EventHandlerType]:
    """pynetdicom notification handlers for association events and open connections."""
    _create()
    return [
        (evt.EVT_ESTABLISHED, _on_event("established")),
        (evt.EVT_REJECTED, _on_event("rejected")),
        (evt.EVT_RELEASED, _on_event("released")),
        (evt.EVT_ABORTED, _on_event("aborted")),
        (evt.EVT_CONN_OPEN, _on_connection(1)),
        (evt.EVT_CONN_CLOSE, _on_connection(-1)),
    ]


def serve(settings: ListenerSettings) -> MetricsServer | None:
    """Serve this process's metrics on ``CXR_METRICS_HOST:CXR_METRICS_PORT`` (unset: off)."""
    _create()
    return serve_metrics(settings.metrics_host, settings.metrics_port, "listener")
