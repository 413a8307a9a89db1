"""For operations (role ops): ``GET /readyz`` (JSON) and ``GET /ops`` (the same as a
page, with the open escalations and their webhook deliveries, and the unresolved
conflicts).
Ready means healthy (database, broker) and the model files a worker would load verify
(``worklist.health``). The page also shows time to read and time to score
(``cxr_db.reading.stats``). ``/metrics`` is ``worklist.metrics_route``."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from cxr_db.conflicts import store as conflicts
from cxr_db.escalations import store as escalations
from cxr_db.reading import stats
from worklist import pages
from worklist.deps import Ops, State, WebState
from worklist.health import check_health, check_model_files
from worklist.responses import html, nav

logger = logging.getLogger(__name__)

router = APIRouter()


def readiness(state: WebState) -> tuple[bool, dict[str, object]]:
    cfg = state.config
    checks = check_health(state.engine, cfg.broker_url, cfg.broker_timeout_s)
    model = check_model_files(cfg.resolved_model_dir, cfg.resolved_calibration_path)
    ok = all(c.ok for c in checks) and model.ok
    body: dict[str, object] = {"status": "ready" if ok else "not ready"}
    body.update({c.name: c.as_json() for c in checks})
    body["model"] = model.as_json()
    return ok, body


@router.get("/readyz")
def readyz(principal: Ops, state: State) -> JSONResponse:
    ok, body = readiness(state)
    return JSONResponse(body, status_code=200 if ok else 503)


def _open_escalations(state: WebState) -> list[escalations.OpenEscalation] | None:
    """The open escalations, or None when the database cannot say (the page still shows
    the health checks that explain why)."""
    try:
        return escalations.open_escalations(state.engine)
    except SQLAlchemyError as exc:
        logger.warning("open escalations unavailable (%s)", type(exc).__name__)
        return None


def _open_conflicts(state: WebState) -> list[conflicts.OpenConflict] | None:
    """The unresolved conflicts (both kinds), or None when the database cannot say."""
    try:
        return conflicts.open_conflicts(state.engine)
    except SQLAlchemyError as exc:
        logger.warning("open conflicts unavailable (%s)", type(exc).__name__)
        return None


@router.get("/ops", response_class=HTMLResponse)
def ops_page(principal: Ops, state: State) -> Response:
    ok, body = readiness(state)
    flat = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in body.items()}
    try:
        windows = stats.read_stats(state.engine, target_s=state.config.read_target_s)
    except SQLAlchemyError as exc:  # the health table above already says why
        logger.warning("ops page: time to read could not be read (%s)", type(exc).__name__)
        windows = None
    page = pages.ops_page(
        flat,
        nav(principal),
        _open_escalations(state),
        windows,
        stats.TABLE_HEADER,
        _open_conflicts(state),
    )
    return html(page, 200 if ok else 503)
