"""What needs no credentials: ``GET /healthz`` and the pages' scripts."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from worklist.assets import VIEWER_JS
from worklist.deps import State
from worklist.health import check_health

router = APIRouter()


@router.get("/healthz")
def healthz(state: State) -> JSONResponse:
    """Database and broker answer: 200, else 503."""
    cfg = state.config
    checks = check_health(state.engine, cfg.broker_url, cfg.broker_timeout_s)
    ok = all(c.ok for c in checks)
    body: dict[str, object] = {"status": "ok" if ok else "unavailable"}
    body.update({c.name: c.detail for c in checks})
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/static/viewer.js")
def viewer_js() -> Response:
    return Response(
        VIEWER_JS,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@cache
def _reading_js() -> str:
    """``worklist/templates/reading.js``: shortcuts, the worklist's refresh, drafts."""
    return files("worklist").joinpath("templates/reading.js").read_text(encoding="utf-8")


@router.get("/static/reading.js")
def reading_js() -> Response:
    return Response(
        _reading_js(),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )
