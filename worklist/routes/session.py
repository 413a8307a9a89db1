"""Signing in and out: ``GET|POST /sign-in`` (no credentials), ``POST /sign-out``."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from cxr_db.accounts import store as accounts
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
from worklist.responses import html

router = APIRouter()

SIGN_IN_FAILED = (
    "Sign-in failed: wrong user name or password, or the account is locked after "
    "repeated failures, or disabled. Ask an administrator if it keeps failing."
)


def _sign_in_response(
    state: WebState,
    next_path: str,
    request: Request,
    message: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    token = new_signin_token()
    response = html(pages.sign_in_page(token, next_path, message), status_code)
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
    result = accounts.sign_in(
        state.engine,
        username,
        password,
        passwords=state.config.passwords,
        policy=state.config.policy,
        client_addr=client_addr(request),
    )
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
