"""The FastAPI app: sign-in, the reading worklist, study pages with images and answers,
the admin pages, a JSON API, health and readiness.

Routes (role needed; see ``worklist.auth`` for how credentials are checked):

- ``GET /healthz`` (none): database and broker answer → 200, else 503.
- ``GET|POST /sign-in`` (none), ``POST /sign-out`` (session + CSRF).
- ``GET /static/viewer.js`` (none): the study page's viewer script.
- ``GET /`` (radiologist; others are sent to their home page): the worklist,
  ``?view=unread|read|all&q=&after=`` (unread by default, priority first, paged).
- ``GET /studies/{study_instance_uid}`` (radiologist): claims the study (``in_progress``)
  and shows it: patient context, score against threshold, radiograph and heatmap, answer
  form. ``POST …/answer`` and ``POST …/release`` (CSRF).
- ``GET /images/{sop_instance_uid}.png``, ``GET /heatmaps/{sop_instance_uid}.png``
  (radiologist): the radiograph and the heatmap; each fetch is audited.
- ``GET /model-card`` (radiologist): the shipped model's card as text.
- ``GET /admin/audit``, ``GET /admin/users`` (admin).
- ``GET /api/worklist`` (radiologist): JSON, paged with ``Link: <…>; rel="next"``.
- ``POST /api/studies/{study_instance_uid}/answer`` (radiologist): JSON answer.
- ``GET /api/audit`` (admin): JSON, filtered and paged.
- ``GET /readyz``, ``GET /metrics``, ``GET /ops`` (ops).

Every response carries a strict CSP (no inline script; ``script-src 'self'``), no-store
caching and no referrer. Host headers are checked (DNS rebinding). Access is logged by
method, path (never the query string: a search may hold anything) and status.
"""

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cxr_common.errors import CxrTriageError
from cxr_common.storage import sanitise_uid
from cxr_db import accounts, audit, reading, reads
from cxr_db.audit import AuditEvent, AuditQuery
from cxr_db.errors import (
    InvalidAnswerError,
    StudyAlreadyReadError,
    StudyClaimedError,
    StudyNotFoundError,
)
from cxr_db.reads import InvalidCursorError, ReadView, WorklistQuery
from cxr_db.schema_reading import AuditAction, ReadState, Role
from cxr_db.statuses import InstanceStatus
from worklist import pages
from worklist.assets import VIEWER_JS
from worklist.auth import (
    ADMINS,
    CSRF_FIELD,
    CSRF_HEADER,
    HOME,
    OPS,
    READERS,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    AuthError,
    FormError,
    Principal,
    authenticate,
    check_csrf,
    client_addr,
    cookie_secure,
    is_api,
    new_signin_token,
    read_form,
    requirer,
    safe_next,
)
from worklist.config import WebConfig
from worklist.health import check_health, check_model_files
from worklist.metrics_route import metrics_router, scrape_token_or
from worklist.present import entry_json
from worklist.radiograph import RadiographCache, Withheld, patient_context

logger = logging.getLogger(__name__)
access_log = logging.getLogger("worklist.access")

MAX_LIMIT = 5000
API_DEFAULT_LIMIT = 100
_UID_RULE = "a DICOM UID is digits and dots, at most 64 characters"
_SIGN_IN_FAILED = (
    "Sign-in failed: wrong user name or password, or the account is locked after "
    "repeated failures, or disabled. Ask an administrator if it keeps failing."
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many studies")]
_UNSCORED = tuple(reads.UNSCORED_FINAL)


def _valid_uid(uid: str) -> str | None:
    try:
        return sanitise_uid(uid)
    except ValueError:
        return None


def _nav(p: Principal) -> pages.Nav:
    return pages.Nav(p.name, p.role, p.csrf_token)


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


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code)


def _html_error(
    status_code: int, title: str, message: str, p: Principal | None = None
) -> HTMLResponse:
    return _html(pages.error_page(title, message, _nav(p) if p else None), status_code)


def _json_error(status_code: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers or None)


def _parse_view(value: str | None) -> ReadView | None:
    try:
        return ReadView(value or ReadView.UNREAD.value)
    except ValueError:
        return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _AnswerInput:
    finding: str
    note: str | None
    model_version: str | None
    score: float | None


def _answer_input(data: dict[str, Any]) -> _AnswerInput:
    """Validate the shape of an answer (values are checked by ``reading.record_answer``)."""
    finding = data.get("finding")
    if not isinstance(finding, str):
        raise InvalidAnswerError("finding is required: pneumonia, no_pneumonia or other")
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        raise InvalidAnswerError("note must be text")
    version = data.get("model_version") or None
    if version is not None and not isinstance(version, str):
        raise InvalidAnswerError("model_version must be text")
    raw_score = data.get("score")
    score: float | None = None
    if raw_score not in (None, ""):
        try:
            score = float(raw_score)
        except (TypeError, ValueError) as exc:
            raise InvalidAnswerError("score must be a number between 0 and 1") from exc
        if not math.isfinite(score):
            raise InvalidAnswerError("score must be a number between 0 and 1")
    return _AnswerInput(finding, note, version, score)


def create_app(engine: Engine, config: WebConfig | None = None) -> FastAPI:
    """Build the worklist app over ``engine`` (the caller owns and disposes of it)."""
    cfg = config or WebConfig()
    require = requirer(engine, cfg)
    radiographs = RadiographCache()
    app = FastAPI(
        title="cxr-triage worklist",
        description="Clinical decision support, not a diagnosis.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    Reader = Annotated[Principal, Depends(require(*READERS))]
    Admin = Annotated[Principal, Depends(require(*ADMINS))]
    Ops = Annotated[Principal, Depends(require(*OPS))]
    Form = Annotated[dict[str, str], Depends(read_form)]

    @app.middleware("http")
    async def _headers_and_access_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
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

    # outermost: a request for a host we do not serve gets 400 before anything else
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(cfg.trusted_hosts))

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        if is_api(request.url.path):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
            return _json_error(exc.status_code, exc.message, **headers)
        if exc.status_code == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":
                target = "/"
            return RedirectResponse("/sign-in?" + urlencode({"next": target}), status_code=303)
        principal = getattr(request.state, "principal", None)
        p = principal if isinstance(principal, Principal) else None
        return _html_error(exc.status_code, "Not allowed", exc.message, p)

    @app.exception_handler(FormError)
    async def _form_error(request: Request, exc: FormError) -> Response:
        if is_api(request.url.path):
            return _json_error(exc.status_code, exc.message)
        return _html_error(exc.status_code, "Bad form", exc.message)

    # ------------------------------------------------------------------ public

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks = check_health(engine, cfg.broker_url, cfg.broker_timeout_s)
        ok = all(c.ok for c in checks)
        body: dict[str, object] = {"status": "ok" if ok else "unavailable"}
        body.update({c.name: c.detail for c in checks})
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/static/viewer.js")
    def viewer_js() -> Response:
        return Response(
            VIEWER_JS,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    def _sign_in_response(
        next_path: str, request: Request, message: str | None = None, status_code: int = 200
    ) -> HTMLResponse:
        token = new_signin_token()
        response = _html(pages.sign_in_page(token, next_path, message), status_code)
        response.set_cookie(
            SIGNIN_COOKIE,
            token,
            max_age=3600,
            path="/sign-in",
            httponly=True,
            samesite="strict",
            secure=cookie_secure(request, cfg),
        )
        return response

    @app.get("/sign-in", response_class=HTMLResponse)
    def sign_in_form(request: Request, next: str | None = None) -> Response:
        try:
            principal = authenticate(request, engine, cfg)
        except AuthError:
            principal = None
        if principal is not None:
            return RedirectResponse(HOME[principal.role], status_code=303)
        return _sign_in_response(safe_next(next), request)

    @app.post("/sign-in")
    def sign_in(request: Request, form: Form) -> Response:
        expected = request.cookies.get(SIGNIN_COOKIE)
        submitted = form.get(CSRF_FIELD, "")
        if not expected or not hmac.compare_digest(expected, submitted):
            return _sign_in_response(
                safe_next(form.get("next")),
                request,
                "The sign-in form expired or was not sent from this site: try again.",
                403,
            )
        username = form.get("username", "").strip()
        password = form.get("password", "")
        if not username or not password or len(username) > 64 or len(password) > 1024:
            return _sign_in_response(safe_next(form.get("next")), request, _SIGN_IN_FAILED, 401)
        result = accounts.sign_in(
            engine,
            username,
            password,
            passwords=cfg.passwords,
            policy=cfg.policy,
            client_addr=client_addr(request),
        )
        if not result.ok or result.session is None:
            return _sign_in_response(safe_next(form.get("next")), request, _SIGN_IN_FAILED, 401)
        user = result.session.user
        target = safe_next(form.get("next"))
        if target == "/":
            target = HOME[user.role]
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            result.session.secret,
            path="/",
            httponly=True,
            samesite="strict",
            secure=cookie_secure(request, cfg),
        )
        response.delete_cookie(SIGNIN_COOKIE, path="/sign-in")
        return response

    @app.post("/sign-out")
    def sign_out(request: Request, form: Form) -> Response:
        principal = authenticate(request, engine, cfg)
        if principal is not None and principal.session_secret is not None:
            check_csrf(principal, form.get(CSRF_FIELD))
            accounts.end_session(engine, principal.session_secret, client_addr=client_addr(request))
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ worklist

    @app.get("/", response_class=HTMLResponse)
    def worklist_page(
        request: Request,
        view: str | None = None,
        q: str = "",
        after: str | None = None,
        status: str | None = None,
        saved: str | None = None,
    ) -> Response:
        principal = authenticate(request, engine, cfg)
        if principal is None:
            raise AuthError(401, "sign in")
        if principal.role is not Role.RADIOLOGIST:
            return RedirectResponse(HOME[principal.role], status_code=303)
        nav = _nav(principal)
        read_view = _parse_view(view)
        if read_view is None:
            return _html_error(400, "Unknown view", "view is unread, read or all.", principal)
        q = q.strip()[:100]
        only_unscored = status == "unscored"
        split = read_view is ReadView.UNREAD and not q and not only_unscored
        query = WorklistQuery(
            view=read_view,
            search=q or None,
            statuses=_UNSCORED if only_unscored else (),
            exclude_statuses=_UNSCORED if split else (),
            limit=cfg.page_size,
            after=after,
        )
        try:
            page = reads.worklist_page(engine, query)
        except InvalidCursorError as exc:
            return _html_error(400, "Bad page link", str(exc), principal)
        unscored: list[reads.WorklistEntry] = []
        unscored_more = False
        if split and after is None:
            side = reads.worklist_page(
                engine,
                WorklistQuery(view=ReadView.UNREAD, statuses=_UNSCORED, limit=cfg.page_size),
            )
            unscored, unscored_more = side.entries, side.next_cursor is not None
        params = {"view": read_view.value, "q": q, "status": "unscored" if only_unscored else ""}
        base = {k: v for k, v in params.items() if v}
        notice = None
        if saved and _valid_uid(saved):
            notice = f"Answer saved for study {saved}: it has left the unread list."
        w = pages.WorklistView(
            view=read_view,
            entries=page.entries,
            now=datetime.now(UTC),
            counts=reads.unread_counts(engine) if read_view is ReadView.UNREAD else None,
            unscored=unscored,
            unscored_more=unscored_more,
            search=q,
            only_unscored=only_unscored,
            next_href="/?" + urlencode({**base, "after": page.next_cursor})
            if page.next_cursor
            else None,
            first_href="/?" + urlencode(base) if after else None,
            notice=notice,
            banner=_drift_banner(engine),
        )
        return _html(pages.worklist_page(w, nav))

    def _study_view(
        uid: str, principal: Principal, message: str | None = None
    ) -> pages.StudyView | None:
        detail = reads.study_detail(engine, uid)
        if detail is None:
            return None
        patient = None
        problem = None
        instance_views: list[pages.InstanceView] = []
        for inst in detail.instances:
            burned_in = None
            if inst.storage_uri:
                try:
                    ctx = patient_context(inst.storage_uri, engine, inst.sop_instance_uid)
                    burned_in = ctx.burned_in_annotation
                    if patient is None:
                        patient = ctx
                except CxrTriageError as exc:
                    problem = (
                        "Patient context unavailable: the stored file could not be read "
                        f"({type(exc).__name__})."
                    )
            scored = inst.status is InstanceStatus.DONE
            withheld = None
            if scored and burned_in:
                withheld = (
                    "Radiograph withheld: text is burned into its pixels. View it in the PACS."
                )
            elif scored and burned_in is None:
                withheld = "Radiograph unavailable: the stored file could not be read."
            instance_views.append(pages.InstanceView(inst, scored and burned_in is False, withheld))
        user = principal.user
        read = detail.study
        claimed_by_me = (
            read.read_state is ReadState.IN_PROGRESS
            and user is not None
            and read.claimed_by == user.username
        )
        can_answer = user is not None and (read.read_state is ReadState.UNREAD or claimed_by_me)
        threshold = next((i.threshold for i in detail.instances if i.threshold is not None), None)
        return pages.StudyView(
            detail=detail,
            instances=instance_views,
            patient=patient,
            patient_problem=problem,
            answers=reading.answers_for(engine, uid),
            can_answer=can_answer,
            claimed_by_me=claimed_by_me,
            csrf_token=principal.csrf_token,
            threshold=threshold,
            message=message,
        )

    @app.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
    def study_page(study_instance_uid: str, principal: Reader) -> Response:
        uid = _valid_uid(study_instance_uid)
        if uid is None:
            return _html_error(
                400, "Malformed Study Instance UID", _UID_RULE.capitalize() + ".", principal
            )
        if reads.study_detail(engine, uid) is None:
            return _html_error(
                404,
                "Study not found",
                f"No study with Study Instance UID {uid} is on record.",
                principal,
            )
        audit.record(engine, AuditEvent(AuditAction.STUDY_VIEW, principal.actor(), uid))
        if principal.user is not None:
            reading.claim_study(
                engine,
                uid,
                principal.user,
                timeout=cfg.claim_timeout,
                client_addr=principal.client_addr,
            )
        view = _study_view(uid, principal)
        assert view is not None
        return _html(pages.study_page(view, _nav(principal)))

    def _record(uid: str, principal: Principal, data: dict[str, Any]) -> reading.AnswerRecord:
        answer = _answer_input(data)
        return reading.record_answer(
            engine,
            uid,
            principal.reader(),
            answer.finding,
            note=answer.note,
            model_version=answer.model_version,
            score=answer.score,
            client_addr=principal.client_addr,
        )

    @app.post("/studies/{study_instance_uid}/answer")
    def answer_form(study_instance_uid: str, principal: Reader, form: Form) -> Response:
        check_csrf(principal, form.get(CSRF_FIELD))
        uid = _valid_uid(study_instance_uid)
        if uid is None:
            return _html_error(
                400, "Malformed Study Instance UID", _UID_RULE.capitalize() + ".", principal
            )
        try:
            _record(uid, principal, form)
        except StudyNotFoundError:
            return _html_error(404, "Study not found", f"No study {uid}.", principal)
        except (StudyClaimedError, StudyAlreadyReadError, InvalidAnswerError) as exc:
            view = _study_view(uid, principal, f"Not saved: {exc}.")
            if view is None:
                return _html_error(404, "Study not found", f"No study {uid}.", principal)
            code = 422 if isinstance(exc, InvalidAnswerError) else 409
            return _html(pages.study_page(view, _nav(principal)), code)
        return RedirectResponse("/?" + urlencode({"saved": uid}), status_code=303)

    @app.post("/studies/{study_instance_uid}/release")
    def release(study_instance_uid: str, principal: Reader, form: Form) -> Response:
        check_csrf(principal, form.get(CSRF_FIELD))
        uid = _valid_uid(study_instance_uid)
        if uid is None or principal.user is None:
            return _html_error(400, "Cannot release", "Not a study you hold.", principal)
        try:
            reading.release_study(engine, uid, principal.user, client_addr=principal.client_addr)
        except StudyNotFoundError:
            return _html_error(404, "Study not found", f"No study {uid}.", principal)
        return RedirectResponse("/", status_code=303)

    # ------------------------------------------------------------------ images

    def _png_uid(sop_instance_uid: str) -> str | None:
        return _valid_uid(sop_instance_uid)

    @app.get("/heatmaps/{sop_instance_uid}.png", response_class=Response)
    def heatmap(sop_instance_uid: str, principal: Reader) -> Response:
        uid = _png_uid(sop_instance_uid)
        if uid is None:
            return _json_error(400, f"malformed SOP Instance UID: {_UID_RULE}")
        png = reads.heatmap_png(engine, uid)
        found = reads.instance_file(engine, uid) if png is not None else None
        if png is None or found is None:
            return _json_error(404, f"no heatmap for SOP Instance UID {uid}")
        audit.record(
            engine,
            AuditEvent(
                AuditAction.HEATMAP_FETCH,
                principal.actor(),
                uid,
                {"study_instance_uid": found.study_instance_uid},
            ),
        )
        return Response(png, media_type="image/png")

    @app.get("/images/{sop_instance_uid}.png", response_class=Response)
    def radiograph(sop_instance_uid: str, principal: Reader) -> Response:
        uid = _png_uid(sop_instance_uid)
        if uid is None:
            return _json_error(400, f"malformed SOP Instance UID: {_UID_RULE}")
        found = reads.instance_file(engine, uid)
        if found is None or found.status is not InstanceStatus.DONE:
            return _json_error(404, f"no scored radiograph for SOP Instance UID {uid}")
        try:
            png = radiographs.png(found.storage_uri)
        except Withheld as exc:
            return _json_error(404, str(exc))
        except CxrTriageError as exc:
            logger.warning("radiograph %s could not be rendered (%s)", uid, type(exc).__name__)
            return _json_error(404, f"the stored file of {uid} could not be rendered")
        audit.record(
            engine,
            AuditEvent(
                AuditAction.IMAGE_FETCH,
                principal.actor(),
                uid,
                {"study_instance_uid": found.study_instance_uid},
            ),
        )
        return Response(png, media_type="image/png")

    @app.get("/model-card", response_class=HTMLResponse)
    def model_card(principal: Reader) -> Response:
        path = cfg.resolved_model_dir / "MODEL_CARD.md"
        try:
            card = path.read_text(encoding="utf-8")
        except OSError:
            return _html_error(404, "No model card", "The model has no MODEL_CARD.md.", principal)
        return _html(pages.model_card_page(card, _nav(principal)))

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/worklist")
    def worklist_json(
        request: Request,
        principal: Reader,
        state: str = "unread",
        q: str = "",
        after: str | None = None,
        limit: Limit = API_DEFAULT_LIMIT,
    ) -> Response:
        read_view = _parse_view(state)
        if read_view is None:
            return _json_error(422, "state must be unread, read or all")
        try:
            page = reads.worklist_page(
                engine,
                WorklistQuery(view=read_view, search=q.strip() or None, limit=limit, after=after),
            )
        except InvalidCursorError as exc:
            return _json_error(400, str(exc))
        headers = {}
        if page.next_cursor:
            params = {"state": read_view.value, "limit": str(limit), "after": page.next_cursor}
            if q.strip():
                params["q"] = q.strip()
            headers["Link"] = f'</api/worklist?{urlencode(params)}>; rel="next"'
            headers["X-Next-Cursor"] = page.next_cursor
        return JSONResponse([entry_json(e) for e in page.entries], headers=headers)

    @app.post("/api/studies/{study_instance_uid}/answer")
    async def answer_json(study_instance_uid: str, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        principal = await run_in_threadpool(require(*READERS), request)
        check_csrf(principal, request.headers.get(CSRF_HEADER))
        uid = _valid_uid(study_instance_uid)
        if uid is None:
            return _json_error(400, f"malformed Study Instance UID: {_UID_RULE}")
        body = await request.body()
        if len(body) > 64 * 1024:
            return _json_error(413, "the answer is too large")
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            return _json_error(400, 'send a JSON object: {"finding": "pneumonia", "note": …}')
        if not isinstance(data, dict):
            return _json_error(400, 'send a JSON object: {"finding": "pneumonia", "note": …}')
        try:
            record = await run_in_threadpool(_record, uid, principal, data)
        except StudyNotFoundError:
            return _json_error(404, f"no study with Study Instance UID {uid}")
        except (StudyClaimedError, StudyAlreadyReadError) as exc:
            return _json_error(409, str(exc))
        except InvalidAnswerError as exc:
            return _json_error(422, str(exc))
        return JSONResponse(
            {
                "answer_id": record.id,
                "study_instance_uid": record.study_instance_uid,
                "finding": record.finding.value,
                "read_by": record.reader,
                "read_at": record.created_at.isoformat(),
                "model_version": record.model_version,
                "score": record.score,
                "read_state": ReadState.READ.value,
            },
            status_code=201,
        )

    def _audit_query(
        actor: str | None,
        action: str | None,
        target: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        before_id: int | None,
    ) -> AuditQuery:
        return AuditQuery(
            actor=actor or None,
            action=AuditAction(action) if action else None,
            target=target or None,
            since=_parse_time(since),
            until=_parse_time(until),
            limit=limit,
            before_id=before_id,
        )

    @app.get("/api/audit")
    def audit_json(
        principal: Admin,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: int | None = None,
    ) -> Response:
        try:
            query = _audit_query(actor, action, target, since, until, limit, before_id)
        except ValueError as exc:
            return _json_error(422, f"bad filter: {exc}")
        page = audit.list_entries(engine, query)
        audit.record(
            engine,
            AuditEvent(
                AuditAction.AUDIT_VIEW, principal.actor(), None, {"entries": len(page.entries)}
            ),
        )
        return JSONResponse(
            {
                "entries": [e.as_json() for e in page.entries],
                "next_before_id": page.next_before_id,
            }
        )

    # ------------------------------------------------------------------ admin, ops

    @app.get("/admin/audit", response_class=HTMLResponse)
    def audit_page(
        principal: Admin,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before_id: int | None = None,
    ) -> Response:
        filters = {
            k: v
            for k, v in {
                "actor": actor,
                "action": action,
                "target": target,
                "since": since,
                "until": until,
            }.items()
            if v
        }
        try:
            query = _audit_query(actor, action, target, since, until, 100, before_id)
        except ValueError as exc:
            return _html_error(400, "Bad filter", str(exc), principal)
        page = audit.list_entries(engine, query)
        audit.record(
            engine,
            AuditEvent(
                AuditAction.AUDIT_VIEW, principal.actor(), None, {"entries": len(page.entries)}
            ),
        )
        next_href = None
        if page.next_before_id is not None:
            next_href = "/admin/audit?" + urlencode({**filters, "before_id": page.next_before_id})
        view = pages.AuditView(page.entries, filters, next_href, audit.count_entries(engine, query))
        return _html(pages.audit_page(view, _nav(principal)))

    @app.get("/admin/users", response_class=HTMLResponse)
    def users_page(principal: Admin) -> Response:
        return _html(
            pages.users_page(
                accounts.list_users(engine), accounts.list_tokens(engine), _nav(principal)
            )
        )

    def _readiness() -> tuple[bool, dict[str, object]]:
        checks = check_health(engine, cfg.broker_url, cfg.broker_timeout_s)
        model = check_model_files(cfg.resolved_model_dir, cfg.resolved_calibration_path)
        ok = all(c.ok for c in checks) and model.ok
        body: dict[str, object] = {"status": "ready" if ok else "not ready"}
        body.update({c.name: c.as_json() for c in checks})
        body["model"] = model.as_json()
        return ok, body

    @app.get("/readyz")
    def readyz(principal: Ops) -> JSONResponse:
        ok, body = _readiness()
        return JSONResponse(body, status_code=200 if ok else 503)

    app.include_router(
        metrics_router(
            engine,
            broker_url=cfg.broker_url,
            queue_names=(cfg.queue_name,),
            authorize=scrape_token_or(cfg.metrics_token, require(*OPS)),
        )
    )

    @app.get("/ops", response_class=HTMLResponse)
    def ops_page(principal: Ops) -> Response:
        ok, body = _readiness()
        flat = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in body.items()}
        return _html(pages.ops_page(flat, _nav(principal)), 200 if ok else 503)

    return app


__all__ = ["create_app"]
