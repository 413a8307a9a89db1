"""Signing in and out: ``GET|POST /sign-in`` (no credentials), ``POST /sign-out``.

Three limits keep wrong passwords from locking real users out or exhausting the server:

- per client address, across accounts: ``CXR_WEB_SIGN_IN_ATTEMPTS_PER_ADDR`` failures per
  ``CXR_WEB_SIGN_IN_WINDOW_S`` (attempts in progress count too), then 429 with
  ``Retry-After`` (``worklist.throttle``);
- per (account, client address): ``CXR_WEB_MAX_FAILED_SIGN_INS`` wrong passwords in a row
  lock that account *from that address* for ``CXR_WEB_LOCKOUT_S``, answered 429 with
  ``Retry-After`` (``cxr_db.accounts.sign_in``); the real user signing in from elsewhere
  is not affected, and ``cxr-triage user unlock`` lifts it; a name with no account is
  locked the same way (in memory, ``worklist.throttle.NameLocks``), so lock-outs do not
  tell which user names exist;
- at most ``CXR_WEB_MAX_CONCURRENT_HASHES`` argon2 checks at once, none holding a
  database connection; when none is free in time, 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import math
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from cxr_common.passwords import PasswordsBusyError
from cxr_db.accounts import store as accounts
from cxr_db.accounts.store import SignInOutcome
from worklist import pages
from worklist.auth import (
    CSRF_FIELD,
    HOME,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    AuthError,
    authenticate,
    check_csrf,
    client_addr,
    cookie_secure,
    new_signin_token,
    safe_next,
)
from worklist.deps import Form, MaybePrincipal, State, WebState
from worklist.refusals import record_refusal
from worklist.responses import html
from worklist.throttle import NameLocks

router = APIRouter()

SIGN_IN_FAILED = (
    "Sign-in failed: wrong user name or password, or the account is disabled. "
    "Ask an administrator if it keeps failing."
)
ACCOUNT_LOCKED = (
    "Too many wrong passwords for this account from your address: sign-in from here is "
    "locked until {until} UTC (elsewhere it still works). An administrator can unlock it "
    "sooner."
)
BUSY_RETRY_S = 5


def _too_many(wait_s: int) -> str:
    minutes = math.ceil(wait_s / 60)
    return (
        "Too many failed sign-ins from your address: try again in "
        f"{minutes} minute{'s' if minutes != 1 else ''}."
    )


def _sign_in_response(
    state: WebState,
    next_path: str,
    request: Request,
    message: str | None = None,
    status_code: int = 200,
    retry_after_s: int | None = None,
) -> HTMLResponse:
    token = new_signin_token()
    response = html(pages.sign_in_page(token, next_path, message), status_code)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=3600,
        path="/sign-in",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, state.config),
    )
    return response


def _locked_response(
    state: WebState, next_path: str, request: Request, wait_s: int
) -> HTMLResponse:
    until = datetime.now(UTC) + timedelta(seconds=wait_s)
    return _sign_in_response(
        state,
        next_path,
        request,
        ACCOUNT_LOCKED.format(until=until.strftime("%H:%M")),
        429,
        retry_after_s=wait_s,
    )


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, state: State, next: str | None = None) -> Response:
    try:
        principal = authenticate(request, state.engine, state.config)
    except AuthError:
        principal = None
    if principal is not None and principal.role in HOME:
        return RedirectResponse(HOME[principal.role], status_code=303)
    return _sign_in_response(state, safe_next(next), request)


@router.post("/sign-in")
def sign_in(request: Request, state: State, form: Form) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE)
    submitted = form.get(CSRF_FIELD, "")
    next_path = safe_next(form.get("next"))
    if not expected or not hmac.compare_digest(expected, submitted):
        record_refusal(request, "csrf", 403)
        return _sign_in_response(
            state,
            next_path,
            request,
            "The sign-in form expired or was not sent from this site: try again.",
            403,
        )
    username = form.get("username", "").strip()
    password = form.get("password", "")
    if not username or not password or len(username) > 64 or len(password) > 1024:
        return _sign_in_response(state, next_path, request, SIGN_IN_FAILED, 401)
    addr = client_addr(request)
    wait_s = state.throttle.begin(addr or "-")
    if wait_s is not None:
        record_refusal(request, "throttled", 429)
        return _sign_in_response(
            state, next_path, request, _too_many(wait_s), 429, retry_after_s=wait_s
        )
    name_key = NameLocks.key(username, addr or "-")
    wait_s = state.unknown_names.locked(name_key)
    if wait_s is not None:  # a name with no account, locked as a real one would be
        state.throttle.end(addr or "-", failed=True)
        return _locked_response(state, next_path, request, wait_s)
    failed = True
    try:
        result = accounts.sign_in(
            state.engine,
            username,
            password,
            passwords=state.config.passwords,
            policy=state.config.policy,
            client_addr=addr,
        )
        failed = not result.ok
    except PasswordsBusyError:
        failed = False  # the server was busy: not the caller's failure
        return _sign_in_response(
            state,
            next_path,
            request,
            "Sign-in is busy right now: try again in a few seconds.",
            503,
            retry_after_s=BUSY_RETRY_S,
        )
    finally:
        state.throttle.end(addr or "-", failed=failed)
    if result.outcome is SignInOutcome.LOCKED and result.locked_until is not None:
        wait = (result.locked_until - datetime.now(UTC)).total_seconds()
        return _locked_response(state, next_path, request, max(1, math.ceil(wait)))
    if result.user is None:  # no such account: lock the name as a real one would be
        wait_s = state.unknown_names.fail(name_key)
        if wait_s is not None:
            return _locked_response(state, next_path, request, wait_s)
    if not result.ok or result.session is None:
        return _sign_in_response(state, next_path, request, SIGN_IN_FAILED, 401)
    user = result.session.user
    target = HOME[user.role] if next_path == "/" else next_path
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        result.session.secret,
        path="/",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, state.config),
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out")
def sign_out(request: Request, state: State, form: Form, principal: MaybePrincipal) -> Response:
    if principal is not None and principal.session_secret is not None:
        check_csrf(principal, form.get(CSRF_FIELD))
        accounts.end_session(
            state.engine, principal.session_secret, client_addr=client_addr(request)
        )
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
