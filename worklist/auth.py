"""Who is asking, and may they: sessions, bearer tokens, roles and CSRF.

Credentials, in order:

1. ``Authorization: Bearer TOKEN`` (scripts, integrations, metrics scrapers): an API token
   (``cxr-triage token create``). A malformed, unknown, revoked or expired one (its own
   ``expires_at``, or older than ``CXR_WEB_TOKEN_MAX_AGE_DAYS``) is refused even when a
   cookie is present too. Requests with a token need no CSRF token (a browser never adds it).
2. The ``cxr_session`` cookie: a server-side session (``cxr_db.accounts``), HttpOnly,
   SameSite=Strict, ``Secure`` over TLS. Every state-changing request it authorises must
   carry the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``).

A page's own background refresh (the worklist polling itself) sends
``X-CXR-Background: refresh``; on a ``GET`` of one of :data:`BACKGROUND_PATHS` the session
is then checked without counting as activity, so a worklist left open still signs out
after the idle timeout. The header does nothing on any other request.

Without valid credentials a browser page answers 303 to ``/sign-in`` and the JSON API
(``/api/*``, ``/dicomweb/*``, ``/readyz``, ``/metrics``) 401; with the wrong role, 403.

Roles (least privilege; one role per account, so a person who both reads and administers
has two accounts):

* ``radiologist``: the worklist, study pages, radiographs and heatmaps, answers.
* ``admin``: users, tokens and the audit log. No patient data: admins see who looked at
  which study (by UID), not the study.
* ``ops``: ``/readyz`` and ``/metrics``. ``/healthz`` needs no credentials.
* ``sender`` (API tokens only): ``POST /dicomweb/studies`` (STOW-RS) and nothing else: a
  modality or PACS that stores reads nothing, and nobody else stores.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from fastapi import Request
from sqlalchemy import Engine

from cxr_db.accounts import store as accounts
from cxr_db.accounts.store import TokenInfo, UserInfo
from cxr_db.accounts.tables import Role
from cxr_db.audit.store import Actor
from cxr_db.audit.tables import ActorKind
from cxr_db.reading.store import Reader
from worklist.config import WebConfig

SESSION_COOKIE = "cxr_session"
SIGNIN_COOKIE = "cxr_signin"  # double-submit token of the sign-in form (no session yet)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 64 * 1024
API_PREFIXES = ("/api/", "/dicomweb/")
API_PATHS = ("/readyz", "/metrics")
BACKGROUND_HEADER = "x-cxr-background"
BACKGROUND_VALUE = "refresh"
#: The only GETs a background refresh may make without touching the session.
BACKGROUND_PATHS = ("/", "/api/worklist")
_STUDY_ACTION = re.compile(r"(/studies/[0-9.]{1,64})/(?:answer|release)")

READERS = (Role.RADIOLOGIST,)
ADMINS = (Role.ADMIN,)
OPS = (Role.OPS,)
SENDERS = (Role.SENDER,)

#: Where each role lands after signing in.
HOME = {Role.RADIOLOGIST: "/", Role.ADMIN: "/admin/audit", Role.OPS: "/ops"}


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in API_PATHS


class AuthError(Exception):
    """Refused: 401 (no or bad credentials) or 403 (wrong role, bad CSRF token). ``kind``
    names the refusal in its audit row (``worklist.refusals``)."""

    def __init__(self, status_code: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.kind = kind or ("unauthenticated" if status_code == 401 else "forbidden")


class FormError(Exception):
    """A form body that is not a small url-encoded form (413 or 415)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """A signed-in user (``session_secret`` set) or an API token."""

    name: str
    role: Role
    kind: ActorKind
    client_addr: str | None
    user: UserInfo | None = None
    token: TokenInfo | None = None
    session_secret: str | None = None
    csrf_token: str | None = None

    def actor(self) -> Actor:
        return Actor(self.name, self.kind, self.client_addr)

    def reader(self) -> Reader:
        if self.user is not None:
            return Reader.from_user(self.user)
        assert self.token is not None
        return Reader.from_token(self.token)


def client_addr(request: Request) -> str | None:
    """The client's address: the peer's, or the one a trusted proxy forwarded
    (``CXR_WEB_TRUSTED_PROXIES``; ``worklist.app`` rewrites the peer before routing)."""
    return request.client.host if request.client else None


def cookie_secure(request: Request, config: WebConfig) -> bool:
    if config.cookie_secure is not None:
        return config.cookie_secure
    return request.url.scheme == "https"


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in; anything else becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


def is_background(request: Request) -> bool:
    """A page's background refresh: not activity for the idle timeout (see above)."""
    return (
        request.method == "GET"
        and request.url.path in BACKGROUND_PATHS
        and request.headers.get(BACKGROUND_HEADER) == BACKGROUND_VALUE
    )


def return_path(method: str, path: str, query: str = "") -> str:
    """Where to go after signing in, for a request refused for want of a session: the same
    page for a GET; the study page for an answer or a release (the form cannot be replayed,
    but the page keeps the typed answer as a draft); else the worklist."""
    if method == "GET":
        return path + (f"?{query}" if query else "")
    match = _STUDY_ACTION.fullmatch(path)
    return match.group(1) if match else "/"


def new_signin_token() -> str:
    return secrets.token_urlsafe(32)


def authenticate(request: Request, engine: Engine, config: WebConfig) -> Principal | None:
    """The caller's principal, or None without credentials; ``AuthError`` for a bad token.
    Cached on the request, so several dependencies cost one lookup."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        assert isinstance(cached, Principal)
        return cached
    addr = client_addr(request)
    principal: Principal | None = None
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(401, "use 'Authorization: Bearer TOKEN'")
        token = accounts.verify_token(engine, value.strip())
        if token is None:
            raise AuthError(401, "unknown, revoked or expired API token")
        max_age = config.token_max_age
        if max_age is not None and token.created_at + max_age <= datetime.now(UTC):
            raise AuthError(401, "this API token is older than the site allows: create a new one")
        principal = Principal(token.name, token.role, ActorKind.TOKEN, addr, token=token)
    else:
        secret = request.cookies.get(SESSION_COOKIE)
        session = (
            accounts.get_session(
                engine, secret, policy=config.policy, touch=not is_background(request)
            )
            if secret
            else None
        )
        if session is not None:
            principal = Principal(
                session.user.username,
                session.user.role,
                ActorKind.USER,
                addr,
                user=session.user,
                session_secret=secret,
                csrf_token=session.csrf_token,
            )
    request.state.principal = principal
    return principal


def check_csrf(principal: Principal, submitted: str | None) -> None:
    """Refuse (403) a cookie-authorised change without the session's CSRF token."""
    if principal.session_secret is None:
        return  # bearer token: not sent by a browser on its own
    if not accounts.csrf_matches(principal.session_secret, submitted):
        raise AuthError(
            403, "missing or invalid CSRF token: reload the page and try again", kind="csrf"
        )


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form body (first value of each field), at most ``MAX_FORM_BYTES``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError(415, "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, "the form is too large")
    fields: dict[str, str] = {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise FormError(415, "the form is not UTF-8") from exc
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields
