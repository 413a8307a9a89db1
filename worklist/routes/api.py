"""The JSON API for integrations (bearer tokens or a session with its CSRF header):

- ``GET /api/worklist`` (radiologist): paged with ``Link: <…>; rel="next"``, each study as
  ``worklist.present.entry_json``. Each call is audited (``worklist_view``).
- ``POST /api/studies/{study_instance_uid}/answer`` (radiologist): a JSON answer; the score
  and model version recorded with it are the server's (a ``score`` or ``model_version``
  in the body is ignored).
- ``GET /api/audit`` (admin): filtered and paged, newest first.

Errors are ``{"detail": …}`` with the status code.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cxr_db.audit import store as audit
from cxr_db.audit.store import AuditEvent
from cxr_db.audit.tables import AuditAction
from cxr_db.errors import (
    InvalidAnswerError,
    StudyAlreadyReadError,
    StudyClaimedError,
    StudyNotFoundError,
)
from cxr_db.reading.tables import ReadState
from cxr_db.worklist import reads
from cxr_db.worklist.reads import InvalidCursorError, WorklistQuery
from worklist.auth import CSRF_HEADER, check_csrf, is_background
from worklist.deps import Admin, Reader, State
from worklist.inputs import UID_RULE, audit_query, parse_view, record_answer, valid_uid
from worklist.present import entry_json
from worklist.responses import json_error

router = APIRouter(prefix="/api")

MAX_LIMIT = 5000
API_DEFAULT_LIMIT = 100
MAX_ANSWER_BYTES = 64 * 1024

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many studies")]


@router.get("/worklist")
def worklist_json(
    request: Request,
    principal: Reader,
    web: State,
    state: str = "unread",
    q: str = "",
    after: str | None = None,
    limit: Limit = API_DEFAULT_LIMIT,
) -> Response:
    read_view = parse_view(state)
    if read_view is None:
        return json_error(422, "state must be unread, read or all")
    try:
        page = reads.worklist_page(
            web.engine,
            WorklistQuery(view=read_view, search=q.strip() or None, limit=limit, after=after),
        )
    except InvalidCursorError as exc:
        return json_error(400, str(exc))
    audit.record(
        web.engine,
        audit.worklist_view(
            principal.actor(),
            "api",
            read_view.value,
            len(page.entries),
            bool(q.strip()),
            background=is_background(request),
        ),
    )
    headers = {}
    if page.next_cursor:
        params = {"state": read_view.value, "limit": str(limit), "after": page.next_cursor}
        if q.strip():
            params["q"] = q.strip()
        headers["Link"] = f'</api/worklist?{urlencode(params)}>; rel="next"'
        headers["X-Next-Cursor"] = page.next_cursor
    return JSONResponse([entry_json(e) for e in page.entries], headers=headers)


@router.post("/studies/{study_instance_uid}/answer")
async def answer_json(
    study_instance_uid: str, request: Request, principal: Reader, state: State
) -> Response:
    check_csrf(principal, request.headers.get(CSRF_HEADER))
    uid = valid_uid(study_instance_uid)
    if uid is None:
        return json_error(400, f"malformed Study Instance UID: {UID_RULE}")
    body = await request.body()
    if len(body) > MAX_ANSWER_BYTES:
        return json_error(413, "the answer is too large")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return json_error(400, 'send a JSON object: {"finding": "pneumonia", "note": …}')
    if not isinstance(data, dict):
        return json_error(400, 'send a JSON object: {"finding": "pneumonia", "note": …}')
    try:
        record = await run_in_threadpool(record_answer, state.engine, uid, principal, data)
    except StudyNotFoundError:
        return json_error(404, f"no study with Study Instance UID {uid}")
    except (StudyClaimedError, StudyAlreadyReadError) as exc:
        return json_error(409, str(exc))
    except InvalidAnswerError as exc:
        return json_error(422, str(exc))
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


@router.get("/audit")
def audit_json(
    principal: Admin,
    state: State,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: int | None = None,
) -> Response:
    try:
        query = audit_query(actor, action, target, since, until, limit, before_id)
    except ValueError as exc:
        return json_error(422, f"bad filter: {exc}")
    page = audit.list_entries(state.engine, query)
    audit.record(
        state.engine,
        AuditEvent(AuditAction.AUDIT_VIEW, principal.actor(), None, {"entries": len(page.entries)}),
    )
    return JSONResponse(
        {
            "entries": [e.as_json() for e in page.entries],
            "next_before_id": page.next_before_id,
        }
    )
