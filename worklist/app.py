"""The FastAPI app: sign-in, the reading worklist, study pages with images and answers,
the admin pages, a JSON API, health and readiness.

``create_app`` puts the engine and configuration on ``app.state`` (``worklist.deps``),
adds the security headers, the access log and the Host check, turns ``AuthError`` and
``FormError`` into redirects, pages or JSON, and includes one router per area
(``worklist.routes``). Routes (role needed; see ``worklist.auth`` for how credentials are
checked):

- ``GET /healthz`` (none): database and broker answer → 200, else 503.
- ``GET|POST /sign-in`` (none), ``POST /sign-out`` (session + CSRF).
- ``GET /static/viewer.js`` (none): the study page's viewer script.
- ``GET /static/reading.js`` (none): shortcuts, the worklist's own refresh, answer drafts.
- ``GET /`` (radiologist; others are sent to their home page): the worklist,
  ``?view=unread|read|all&q=&after=`` (unread by default, priority first, paged).
- ``GET /studies/{study_instance_uid}`` (radiologist): shows the study: patient context,
  score against threshold, radiograph and heatmap, answer form; it claims nothing.
  ``POST …/claim`` (CSRF; the page's script sends it) claims it (``in_progress``).
  ``POST …/answer`` (CSRF) opens the next unread study (``?saved=UID``), or the
  worklist when none is left; ``POST …/release`` (CSRF).
- ``GET|POST /account/password`` (any signed-in user, CSRF): change one's password.
- ``GET /next-unread?skip=UID`` (radiologist): the next unread study in worklist order.
- ``GET /images/{sop_instance_uid}.png``, ``GET /heatmaps/{sop_instance_uid}.png``
  (radiologist): the radiograph and the heatmap; each fetch is audited.
  ``GET /images/{sop_instance_uid}.u16`` (radiologist): the radiograph at full resolution
  for the viewer's window/level (``worklist.radiograph.encode_full``).
- ``GET /model-card`` (radiologist): the shipped model's card as text.
- ``GET /admin/audit``, ``GET /admin/users`` (admin).
- ``GET /api/worklist`` (radiologist): JSON, paged with ``Link: <…>; rel="next"``.
- ``POST /api/studies/{study_instance_uid}/answer`` (radiologist): JSON answer.
- ``GET /api/audit`` (admin): JSON, filtered and paged.
- ``GET /readyz``, ``GET /metrics``, ``GET /ops`` (ops).
- ``POST /dicomweb/studies``, ``POST /dicomweb/studies/{study_instance_uid}`` (sender):
  STOW-RS into the same ingest core as C-STORE (``worklist.routes.dicomweb``).

A Host header the app does not serve gets 400; over TLS (directly, or as a trusted proxy
says with ``X-Forwarded-Proto``) every response carries ``Strict-Transport-Security``.
``X-Forwarded-For``/``-Proto`` are believed only from ``CXR_WEB_TRUSTED_PROXIES``. Refused
requests (401, 403, CSRF, Host, throttled sign-ins) are audited, rate-limited
(``worklist.refusals``).

Every response carries a strict CSP (no inline script; ``script-src 'self'``;
``connect-src 'self'`` for the worklist's own refresh), no-store
caching and no referrer. Host headers are checked (DNS rebinding). Access is logged by
method, path (never the query string: a search may hold anything) and status.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from cxr_common.clinical import DISCLAIMER
from cxr_ingest import Ingest
from worklist.auth import OPS, AuthError, FormError, Principal, is_api, return_path
from worklist.config import WebConfig
from worklist.deps import WebState, require, web_state
from worklist.metrics_route import metrics_router, scrape_token_or
from worklist.radiograph import RadiographCache
from worklist.refusals import record_refusal
from worklist.responses import html_error, json_error
from worklist.routes import account, admin, api, dicomweb, ops, public, reading, session
from worklist.throttle import AttemptThrottle, NameLocks, RefusalLog

access_log = logging.getLogger("worklist.access")

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """Starlette's ``TrustedHostMiddleware`` rule: the Host header's name (port dropped)
    is one of ``allowed``, matches a ``*.domain`` pattern, or ``*`` allows any."""
    if "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        host = host[1:].split("]", 1)[0]
    else:
        host = host.split(":", 1)[0] if host.count(":") <= 1 else host
    for pattern in allowed:
        p = pattern.lower()
        if host == p or (p.startswith("*.") and host.endswith(p[1:])):
            return True
    return False


async def _headers_and_access_log(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    start = time.perf_counter()
    cfg = web_state(request).config
    if not host_allowed(request.headers.get("host", ""), cfg.trusted_hosts):
        # DNS rebinding or a misconfigured proxy: refused before anything else, audited
        await run_in_threadpool(record_refusal, request, "host", 400)
        response: Response = PlainTextResponse("Invalid host header", status_code=400)
    else:
        response = await call_next(request)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.url.scheme == "https" and cfg.hsts_max_age_s > 0:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={cfg.hsts_max_age_s}")
    principal = getattr(request.state, "principal", None)
    access_log.info(
        "%s %s %d %.0fms %s",
        request.method,
        request.url.path,
        response.status_code,
        (time.perf_counter() - start) * 1000,
        principal.name if isinstance(principal, Principal) else "-",
    )
    return response


async def _auth_error(request: Request, exc: Exception) -> Response:
    """401: JSON with a Bearer challenge for the API, else a redirect to sign-in (back here
    afterwards for a GET, to the study page for its answer or release); 403: JSON or an
    error page."""
    assert isinstance(exc, AuthError)
    await run_in_threadpool(record_refusal, request, exc.kind, exc.status_code)
    if is_api(request.url.path):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        return json_error(exc.status_code, exc.message, **headers)
    if exc.status_code == 401:
        target = return_path(request.method, request.url.path, request.url.query)
        return RedirectResponse("/sign-in?" + urlencode({"next": target}), status_code=303)
    principal = getattr(request.state, "principal", None)
    p = principal if isinstance(principal, Principal) else None
    return html_error(exc.status_code, "Not allowed", exc.message, p)


async def _form_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormError)
    if is_api(request.url.path):
        return json_error(exc.status_code, exc.message)
    return html_error(exc.status_code, "Bad form", exc.message)


def create_app(
    engine: Engine, config: WebConfig | None = None, stow: Ingest | None = None
) -> FastAPI:
    """Build the worklist app over ``engine`` (the caller owns and disposes of it).
    ``stow``: the ingest rules STOW-RS stores through (storage, broker, limits; built by
    ``worklist.server``); None: ``/dicomweb/studies`` answers 503."""
    cfg = config or WebConfig()
    app = FastAPI(
        title="cxr-triage worklist",
        description=DISCLAIMER,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.web = WebState(
        engine=engine,
        config=cfg,
        radiographs=RadiographCache(limits=cfg.limits),
        throttle=AttemptThrottle(cfg.sign_in_attempts_per_addr, cfg.sign_in_window_s),
        refusals=RefusalLog(cfg.refused_audit_every_s),
        unknown_names=NameLocks(cfg.policy.max_failures, cfg.policy.lockout.total_seconds()),
        stow=stow,
    )
    # the Host check comes first in here: a host we do not serve gets 400 before routing
    app.middleware("http")(_headers_and_access_log)
    if cfg.trusted_proxies:
        # outermost: the client address and scheme a trusted proxy forwarded, for every
        # audit row and the Secure flag; ignored from any other peer
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(cfg.trusted_proxies))
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(FormError, _form_error)
    for area in (public, session, account, reading, api, admin, ops, dicomweb):
        app.include_router(area.router)
    app.include_router(
        metrics_router(
            engine,
            broker_url=cfg.broker_url,
            queue_names=(cfg.queue_name, cfg.results_queue_name),
            authorize=scrape_token_or(cfg.metrics_token, require(*OPS)),
        )
    )
    return app


__all__ = ["create_app"]
