"""The signed-in user's own account: ``GET|POST /account/password`` (any role, a browser
session: an API token has no password to change).

The change needs the current password and the session's CSRF token; it ends the user's
other sessions, lifts their sign-in lock-outs and is audited (``password_change``; a wrong
current password is audited as ``password_change_failed``). Wrong current passwords count
against the client address's sign-in throttle (``worklist.throttle``), so the form cannot
be used to guess passwords faster than the sign-in page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from cxr_common.passwords import MAX_PASSWORD_LENGTH, PasswordsBusyError, WeakPasswordError
from cxr_db.accounts import store as accounts
from cxr_db.errors import UnknownUserError, WrongPasswordError
from worklist import pages
from worklist.auth import CSRF_FIELD, AuthError, Principal, check_csrf
from worklist.deps import Form, MaybePrincipal, State
from worklist.refusals import record_refusal
from worklist.responses import html, nav

router = APIRouter(prefix="/account")


def _session_user(principal: Principal | None) -> Principal:
    if principal is None:
        raise AuthError(401, "sign in to change your password")
    if principal.session_secret is None or principal.csrf_token is None:
        raise AuthError(403, "an API token has no password: sign in with a browser")
    return principal


def _page(
    p: Principal, message: str | None = None, status: int = 200, ok: bool = False
) -> Response:
    assert p.csrf_token is not None
    return html(pages.password_page(p.csrf_token, nav(p), message, ok), status)


@router.get("/password", response_class=HTMLResponse)
def password_form(principal: MaybePrincipal) -> Response:
    return _page(_session_user(principal))


@router.post("/password", response_class=HTMLResponse)
def change_password(
    request: Request, principal: MaybePrincipal, form: Form, state: State
) -> Response:
    p = _session_user(principal)
    check_csrf(p, form.get(CSRF_FIELD))
    current = form.get("current_password", "")
    new = form.get("new_password", "")
    if not current or len(current) > MAX_PASSWORD_LENGTH:
        return _page(p, "Type your current password.", 422)
    if new != form.get("repeat_password", ""):
        return _page(p, "The two new passwords differ: nothing changed.", 422)
    if new == current:
        return _page(p, "The new password is the current one: choose another.", 422)
    addr = p.client_addr or "-"
    wait_s = state.throttle.begin(addr)
    if wait_s is not None:
        record_refusal(request, "throttled", 429)
        response = _page(p, f"Too many wrong passwords: try again in {wait_s} s.", 429)
        response.headers["Retry-After"] = str(wait_s)
        return response
    failed = False
    try:
        accounts.change_password(
            state.engine,
            p.name,
            new,
            passwords=state.config.passwords,
            actor=p.actor(),
            current_password=current,
            keep_session=p.session_secret,
        )
    except WeakPasswordError as exc:
        return _page(p, f"Not changed: {exc}.", 422)
    except WrongPasswordError:
        failed = True
        return _page(p, "Not changed: the current password is wrong.", 403)
    except UnknownUserError:
        return _page(p, "Not changed: your account is disabled.", 403)
    except PasswordsBusyError:
        response = _page(p, "Busy right now: try again in a few seconds.", 503)
        response.headers["Retry-After"] = "5"
        return response
    finally:
        state.throttle.end(addr, failed=failed)
    return _page(p, "Password changed. Your other sessions have ended.", ok=True)
