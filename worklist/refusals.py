"""Audit rows for refused requests (401, 403, CSRF failures, Host refusals, throttled
sign-ins), so an admin can see someone probing (``/admin/audit``, action
``request_refused``).

A flood cannot fill the table: ``RefusalLog`` admits the first refusal of each
(client address, kind) and then at most one per ``CXR_WEB_REFUSED_AUDIT_EVERY_S``; the
row after a quiet spell says how many were left out (``suppressed``). The row names the
path (never the query string), the method and the status; its actor is the caller when
known, else anonymous with the client address.
"""

from __future__ import annotations

import logging

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent
from cxr_db.audit.tables import AuditAction
from worklist.auth import SESSION_COOKIE, Principal, client_addr
from worklist.deps import web_state

logger = logging.getLogger(__name__)


def record_refusal(request: Request, kind: str, status_code: int) -> bool:
    """Audit one refused request unless its (address, kind) was recorded lately; True when
    a row was written. Never raises for a database problem (logged instead)."""
    state = web_state(request)
    addr = client_addr(request)
    suppressed = state.refusals.admit(addr or "-", kind)
    if suppressed is None:
        return False
    principal = getattr(request.state, "principal", None)
    actor = principal.actor() if isinstance(principal, Principal) else Actor.anonymous(addr)
    credentials = "authorization" in request.headers or SESSION_COOKIE in request.cookies
    try:
        audit.record(
            state.engine,
            AuditEvent(
                AuditAction.REQUEST_REFUSED,
                actor,
                request.url.path[:200],
                {
                    "kind": kind,
                    "status": status_code,
                    "method": request.method[:16],
                    "credentials_sent": credentials,
                    "suppressed": suppressed,
                },
            ),
        )
    except SQLAlchemyError as exc:
        logger.warning("refused request not audited (%s)", type(exc).__name__)
        return False
    return True
