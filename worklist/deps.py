"""What routes depend on: the app's state and the caller's role (FastAPI dependencies).

``create_app`` stores one :class:`WebState` on ``app.state.web``; a route asks for it as
``state: State`` instead of closing over the engine and configuration. Role checks are
dependencies too: ``principal: Reader`` (radiologist), ``Admin``, ``Ops`` or ``Sender`` refuse any
other caller with ``AuthError`` (401 without credentials, 403 with the wrong role), which
the app turns into a redirect to sign-in, an error page or a JSON error
(``worklist.auth`` says how credentials are checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from cxr_db.accounts.tables import Role
from cxr_ingest import Ingest
from worklist.auth import (
    ADMINS,
    OPS,
    READERS,
    SENDERS,
    AuthError,
    Principal,
    authenticate,
    read_form,
)
from worklist.config import WebConfig
from worklist.radiograph import RadiographCache
from worklist.throttle import AttemptThrottle, NameLocks, RefusalLog


@dataclass(frozen=True)
class WebState:
    """What every request may use: the database, the configuration, the radiograph cache,
    the per-address sign-in throttle, the refused requests' audit limiter and the ingest
    rules STOW-RS stores through (None: STOW-RS answers 503)."""

    engine: Engine
    config: WebConfig
    radiographs: RadiographCache
    throttle: AttemptThrottle
    refusals: RefusalLog
    unknown_names: NameLocks
    stow: Ingest | None = None


def web_state(request: Request) -> WebState:
    state = request.app.state.web
    assert isinstance(state, WebState)
    return state


State = Annotated[WebState, Depends(web_state)]


def current_principal(request: Request, state: State) -> Principal | None:
    """The caller, or None without credentials (``AuthError`` for a bad bearer token)."""
    return authenticate(request, state.engine, state.config)


def require(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency that returns the caller when their role is one of ``roles``."""
    allowed = frozenset(roles)

    def dependency(request: Request) -> Principal:
        state = web_state(request)
        principal = authenticate(request, state.engine, state.config)
        if principal is None:
            raise AuthError(401, "sign in, or send 'Authorization: Bearer TOKEN'")
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise AuthError(403, f"this needs the role {names}; you are {principal.role}")
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require(*READERS))]
Admin = Annotated[Principal, Depends(require(*ADMINS))]
Ops = Annotated[Principal, Depends(require(*OPS))]
Sender = Annotated[Principal, Depends(require(*SENDERS))]
MaybePrincipal = Annotated[Principal | None, Depends(current_principal)]
Form = Annotated[dict[str, str], Depends(read_form)]
