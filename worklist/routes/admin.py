"""The admin pages (role admin): ``GET /admin/audit`` (the audit log, filtered and paged,
under a summary of the last 24 hours' refused requests by client address: someone probing;
each view is itself audited) and ``GET /admin/users`` (users and API tokens)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from cxr_db.accounts import store as accounts
from cxr_db.audit import store as audit
from cxr_db.audit.store import AuditEvent
from cxr_db.audit.tables import AuditAction
from worklist import pages
from worklist.deps import Admin, State
from worklist.inputs import audit_query
from worklist.responses import html, html_error, nav

router = APIRouter(prefix="/admin")

PAGE_SIZE = 100


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    principal: Admin,
    state: State,
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
        query = audit_query(actor, action, target, since, until, PAGE_SIZE, before_id)
    except ValueError as exc:
        return html_error(400, "Bad filter", str(exc), principal)
    engine = state.engine
    page = audit.list_entries(engine, query)
    audit.record(
        engine,
        AuditEvent(AuditAction.AUDIT_VIEW, principal.actor(), None, {"entries": len(page.entries)}),
    )
    next_href = None
    if page.next_before_id is not None:
        next_href = "/admin/audit?" + urlencode({**filters, "before_id": page.next_before_id})
    view = pages.AuditView(
        page.entries,
        filters,
        next_href,
        audit.count_entries(engine, query),
        audit.refusal_summary(engine),
    )
    return html(pages.audit_page(view, nav(principal)))


@router.get("/users", response_class=HTMLResponse)
def users_page(principal: Admin, state: State) -> Response:
    users = accounts.list_users(state.engine)
    tokens = accounts.list_tokens(state.engine)
    return html(pages.users_page(users, tokens, nav(principal)))
