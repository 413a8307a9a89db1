"""The FastAPI app: HTML worklist, study pages, heatmap PNGs, a JSON API and a health check.

Routes and their answers:

- ``GET /``: the worklist page (200).
- ``GET /studies/{study_instance_uid}``: one study (200; 400 malformed UID; 404 unknown).
- ``GET /heatmaps/{sop_instance_uid}.png``: a heatmap overlay (200 ``image/png``; 400; 404).
- ``GET /api/worklist?limit=N``: the worklist as JSON (200; 422 when N is not 1..5000).
- ``GET /healthz``: 200 ``{"status": "ok"}`` when Postgres answers, 503 otherwise.

Everything is read-only; the app holds no state beyond the engine it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cxr_common.storage import sanitise_uid
from cxr_db import reads
from worklist import pages
from worklist.present import entry_json

logger = logging.getLogger(__name__)

MAX_LIMIT = 5000
DEFAULT_LIMIT = 1000
_UID_RULE = "a DICOM UID is digits and dots, at most 64 characters"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many studies")]


def _valid_uid(uid: str) -> str | None:
    try:
        return sanitise_uid(uid)
    except ValueError:
        return None


def _html_error(status_code: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(pages.error_page(title, message), status_code=status_code)


def _drift_banner(engine: Engine) -> str:
    """The drift warning for the worklist page; never stops the page (logged instead)."""
    from cxr_common.drift import PSI_WARN
    from cxr_db.drift import current_drift

    try:
        report = current_drift(engine)
    except SQLAlchemyError as exc:
        logger.warning("drift could not be measured (%s)", type(exc).__name__)
        return ""
    alerts = report.windows[0].alerts(PSI_WARN) if report.windows else []
    return pages.drift_banner(alerts, PSI_WARN)


def create_app(engine: Engine) -> FastAPI:
    """Build the worklist app over ``engine`` (the caller owns and disposes of it)."""
    app = FastAPI(
        title="cxr-triage worklist",
        description="Clinical decision support, not a diagnosis.",
        docs_url=None,
        redoc_url=None,
    )

    @app.middleware("http")
    async def _security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/", response_class=HTMLResponse)
    def worklist_page(limit: Limit = DEFAULT_LIMIT) -> HTMLResponse:
        entries = reads.worklist(engine, limit=limit)
        banner = _drift_banner(engine)
        return HTMLResponse(pages.worklist_page(entries, datetime.now(UTC), banner))

    @app.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
    def study_page(study_instance_uid: str) -> HTMLResponse:
        uid = _valid_uid(study_instance_uid)
        if uid is None:
            return _html_error(400, "Malformed Study Instance UID", _UID_RULE.capitalize() + ".")
        study = reads.study_detail(engine, uid)
        if study is None:
            return _html_error(
                404, "Study not found", f"No study with Study Instance UID {uid} is on record."
            )
        return HTMLResponse(pages.study_page(study))

    @app.get("/heatmaps/{sop_instance_uid}.png", response_class=Response)
    def heatmap(sop_instance_uid: str) -> Response:
        uid = _valid_uid(sop_instance_uid)
        if uid is None:
            return JSONResponse(
                {"detail": f"malformed SOP Instance UID: {_UID_RULE}"}, status_code=400
            )
        png = reads.heatmap_png(engine, uid)
        if png is None:
            return JSONResponse(
                {"detail": f"no heatmap for SOP Instance UID {uid}"}, status_code=404
            )
        return Response(png, media_type="image/png")

    @app.get("/api/worklist")
    def worklist_json(limit: Limit = DEFAULT_LIMIT) -> list[dict[str, object]]:
        return [entry_json(e) for e in reads.worklist(engine, limit=limit)]

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            reads.database_answers(engine)
        except SQLAlchemyError as exc:
            logger.warning("health check: database does not answer (%s)", type(exc).__name__)
            return JSONResponse(
                {"status": "unavailable", "detail": "database does not answer"}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    return app
