"""``GET /metrics``: the pipeline in Prometheus text format, as a self-contained router.

``metrics_router(engine, broker_url=…, queue_names=…, authorize=…)`` serves its own
registry: the database- and broker-backed ``worklist.metrics_collector.PipelineCollector`` plus this
web process's process, platform and GC collectors. Nothing is computed until a scrape.

``authorize(request)`` is a FastAPI dependency supplied by the app: it returns when the
caller may scrape and raises (an ``HTTPException`` or the app's own auth error) when not.
:func:`scrape_token` checks the ``CXR_METRICS_TOKEN`` bearer token in constant time and
answers 401 otherwise; :func:`scrape_token_or` accepts that token and hands any other
request to the app's own check (the ``ops`` role).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from pydantic import SecretStr
from sqlalchemy import Engine

from cxr_common.metrics import HISTOGRAM_WINDOW_S
from worklist.metrics_collector import PipelineCollector

Authorize = Callable[[Request], object]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: What ``generate_latest`` writes (names escaped to underscores): Prometheus text 0.0.4.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _matches(token: SecretStr | None, presented: str | None) -> bool:
    if token is None or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), token.get_secret_value().encode())


def scrape_token(token: SecretStr | None) -> Authorize:
    """Allow ``Authorization: Bearer <token>``; anything else is 401 (every request, when
    no token is configured)."""

    def authorize(request: Request) -> None:
        if not _matches(token, _bearer(request)):
            raise HTTPException(401, "send 'Authorization: Bearer <scrape token>'", _CHALLENGE)

    return authorize


def scrape_token_or(token: SecretStr | None, fallback: Authorize) -> Authorize:
    """Allow the scrape token; hand every other request to ``fallback`` (the app's check)."""

    def authorize(request: Request) -> object:
        if _matches(token, _bearer(request)):
            return None
        return fallback(request)

    return authorize


def metrics_registry(
    engine: Engine,
    broker_url: str | None,
    queue_names: Sequence[str],
    window_s: float = HISTOGRAM_WINDOW_S,
) -> CollectorRegistry:
    """A registry of the pipeline collector and this process's own collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(engine, broker_url, queue_names, window_s))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def metrics_router(
    engine: Engine,
    *,
    broker_url: str | None,
    queue_names: Sequence[str],
    authorize: Authorize,
    window_s: float = HISTOGRAM_WINDOW_S,
) -> APIRouter:
    """The ``/metrics`` route over ``engine`` and the queues ``queue_names`` on
    ``broker_url`` (None: no broker metrics), guarded by ``authorize``."""
    registry = metrics_registry(engine, broker_url, queue_names, window_s)
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, dependencies=[Depends(authorize)])
    def metrics() -> Response:
        # sync on purpose: FastAPI runs it in a worker thread, the queries block
        return Response(
            generate_latest(registry),
            media_type=TEXT_FORMAT,
            headers={"Cache-Control": "no-store"},
        )

    return router
