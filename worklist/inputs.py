"""Request values checked before they reach the database: UIDs, views, times, answers and
audit filters, shared by the pages and the JSON API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cxr_common.storage import sanitise_uid
from cxr_db.audit.store import AuditQuery
from cxr_db.audit.tables import AuditAction
from cxr_db.errors import InvalidAnswerError
from cxr_db.reading import store as reading
from cxr_db.worklist.reads import ReadView
from worklist.auth import Principal

UID_RULE = "a DICOM UID is digits and dots, at most 64 characters"


def valid_uid(uid: str) -> str | None:
    """``uid`` when it is a DICOM UID, else None."""
    try:
        return sanitise_uid(uid)
    except ValueError:
        return None


def parse_view(value: str | None) -> ReadView | None:
    """unread (the default), read or all; None for anything else."""
    try:
        return ReadView(value or ReadView.UNREAD.value)
    except ValueError:
        return None


def parse_time(value: str | None) -> datetime | None:
    """An ISO time (UTC when it names no zone); ``ValueError`` when malformed."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AnswerInput:
    finding: str
    note: str | None


def answer_input(data: dict[str, Any]) -> AnswerInput:
    """Validate the shape of an answer (values are checked by ``reading.record_answer``).
    A ``score`` or ``model_version`` the client sends is ignored: the server records what
    it showed (``record_answer``)."""
    finding = data.get("finding")
    if not isinstance(finding, str):
        raise InvalidAnswerError("finding is required: pneumonia, no_pneumonia or other")
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        raise InvalidAnswerError("note must be text")
    return AnswerInput(finding, note)


def record_answer(
    engine: Engine, uid: str, principal: Principal, data: dict[str, Any]
) -> reading.AnswerRecord:
    """Record ``principal``'s answer ``data`` (a form or a JSON object) on study ``uid``.

    The "score seen" and "model seen" saved with it are looked up here, on the server,
    from the study being answered (its triage score and the newest active-model version:
    what the study page shows), never taken from the request, so a tampered form cannot
    put words in the reader's mouth."""
    answer = answer_input(data)
    return reading.record_answer(
        engine,
        uid,
        principal.reader(),
        answer.finding,
        note=answer.note,
        client_addr=principal.client_addr,
    )


def audit_query(
    actor: str | None,
    action: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    before_id: int | None,
) -> AuditQuery:
    """The audit log filter; ``ValueError`` for an unknown action or a malformed time."""
    return AuditQuery(
        actor=actor or None,
        action=AuditAction(action) if action else None,
        target=target or None,
        since=parse_time(since),
        until=parse_time(until),
        limit=limit,
        before_id=before_id,
    )
