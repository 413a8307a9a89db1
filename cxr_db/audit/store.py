"""The append-only audit log: who did what to which target, when, from where.

``append(conn, event)`` writes inside the caller's transaction, so an action and its audit
row commit or roll back together; ``record(engine, event)`` is the one-transaction form for
events that change nothing else (a study view, a heatmap fetch). Postgres refuses UPDATE,
DELETE and TRUNCATE on ``audit_log`` (revision 0002), so nothing here can edit history.

Targets are Study Instance UIDs, SOP Instance UIDs, user names or token names. ``detail``
holds JSON scalars only (ids, findings, reasons): never a note, a password, a token, a
patient name or any other patient data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Row, Select, func, insert, select

from cxr_db.audit.tables import ActorKind, AuditAction, AuditEntry

Scalar = str | int | float | bool | None
MAX_DETAIL_STRING = 200
MAX_PAGE = 1000
CSV_COLUMNS = ("id", "at", "actor", "actor_kind", "action", "target", "client_addr", "detail")


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (by name), a token (by name), the command line or nobody known."""

    name: str
    kind: ActorKind
    client_addr: str | None = None

    @classmethod
    def anonymous(cls, client_addr: str | None = None) -> Actor:
        """A caller with no known identity. The name typed at a failed sign-in is not kept:
        people type passwords into the user name field."""
        return cls("-", ActorKind.ANONYMOUS, client_addr)


@dataclass(frozen=True)
class AuditEvent:
    action: AuditAction
    actor: Actor
    target: str | None = None
    detail: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    actor_kind: str
    action: str
    target: str | None
    client_addr: str | None
    detail: dict[str, Any]

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "actor_kind": self.actor_kind,
            "action": self.action,
            "target": self.target,
            "client_addr": self.client_addr,
            "detail": self.detail,
        }

    def as_csv_row(self) -> list[str]:
        """Values in ``CSV_COLUMNS`` order; ``detail`` as compact JSON."""
        return [
            str(self.id),
            self.at.isoformat(),
            self.actor,
            self.actor_kind,
            self.action,
            self.target or "",
            self.client_addr or "",
            json.dumps(self.detail, sort_keys=True, separators=(",", ":")),
        ]


@dataclass(frozen=True)
class AuditQuery:
    """Filters (all optional, combined with AND) and keyset paging, newest first."""

    actor: str | None = None
    action: AuditAction | None = None
    target: str | None = None
    since: datetime | None = None  # at >= since
    until: datetime | None = None  # at < until
    limit: int = 100
    before_id: int | None = None  # the page after the one that ended at this id


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditRecord]
    next_before_id: int | None  # pass as ``before_id`` for the next (older) page


def _clean_detail(detail: Mapping[str, Scalar]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for key, value in detail.items():
        if not isinstance(key, str):
            raise TypeError("audit detail keys are strings")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise TypeError(f"audit detail {key!r} is not a JSON scalar")
        if isinstance(value, str) and len(value) > MAX_DETAIL_STRING:
            value = value[:MAX_DETAIL_STRING]
        out[key] = value
    return out


def append(conn: Connection, event: AuditEvent) -> int:
    """Write one audit row in the caller's transaction; returns its id."""
    if not isinstance(event.action, AuditAction):
        raise TypeError("audit action must be an AuditAction")
    stmt = (
        insert(AuditEntry)
        .values(
            actor=event.actor.name[:128],
            actor_kind=ActorKind(event.actor.kind).value,
            action=event.action.value,
            target=event.target[:200] if event.target else None,
            client_addr=event.actor.client_addr[:64] if event.actor.client_addr else None,
            detail=_clean_detail(event.detail),
        )
        .returning(AuditEntry.id)
    )
    return int(conn.execute(stmt).scalar_one())


def worklist_view(
    actor: Actor,
    source: str,
    view: str,
    entries: int,
    searched: bool,
    *,
    background: bool = False,
) -> AuditEvent:
    """A look at the worklist (``source``: page, api or cli): which view, how many studies
    it listed, whether it was searched (never the search text: it may hold anything), and
    whether it was the open page refreshing itself (``background``)."""
    detail: dict[str, Scalar] = {
        "source": source,
        "view": view,
        "entries": entries,
        "searched": searched,
    }
    if background:
        detail["background"] = True
    return AuditEvent(AuditAction.WORKLIST_VIEW, actor, None, detail)


def record(engine: Engine, event: AuditEvent) -> int:
    """Write one audit row in its own transaction (events that change nothing else)."""
    with engine.begin() as conn:
        return append(conn, event)


def _filtered(query: AuditQuery) -> Select[Any]:
    stmt = select(AuditEntry.__table__)
    if query.actor is not None:
        stmt = stmt.where(AuditEntry.actor == query.actor)
    if query.action is not None:
        stmt = stmt.where(AuditEntry.action == AuditAction(query.action).value)
    if query.target is not None:
        stmt = stmt.where(AuditEntry.target == query.target)
    if query.since is not None:
        stmt = stmt.where(AuditEntry.at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEntry.at < query.until)
    return stmt


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        actor_kind=row.actor_kind,
        action=row.action,
        target=row.target,
        client_addr=row.client_addr,
        detail=dict(row.detail or {}),
    )


def list_entries(engine: Engine, query: AuditQuery) -> AuditPage:
    """One page of matching entries, newest first (ids ascend with time)."""
    limit = max(1, min(query.limit, MAX_PAGE))
    stmt = _filtered(query)
    if query.before_id is not None:
        stmt = stmt.where(AuditEntry.id < query.before_id)
    stmt = stmt.order_by(AuditEntry.id.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = [_record(r) for r in conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].id if more and rows else None)


@dataclass(frozen=True)
class RefusalSummary:
    """Refused requests from one client address of one kind (``request_refused`` rows)."""

    client_addr: str | None
    kind: str
    refused: int  # rows plus the refusals they say were left out
    last_at: datetime


def refusal_summary(engine: Engine, hours: int = 24, limit: int = 10) -> list[RefusalSummary]:
    """The client addresses refused most in the last ``hours``, by kind: someone probing."""
    kind = AuditEntry.detail["kind"].astext
    left_out = func.coalesce(AuditEntry.detail["suppressed"].astext.cast(Integer), 0)
    refused = func.sum(1 + left_out)
    stmt = (
        select(AuditEntry.client_addr, kind.label("kind"), refused.label("refused"),
               func.max(AuditEntry.at).label("last_at"))
        .where(
            AuditEntry.action == AuditAction.REQUEST_REFUSED.value,
            AuditEntry.at >= func.now() - timedelta(hours=hours),
        )
        .group_by(AuditEntry.client_addr, kind)
        .order_by(refused.desc(), func.max(AuditEntry.at).desc())
        .limit(limit)
    )  # fmt: skip
    with engine.connect() as conn:
        return [
            RefusalSummary(r.client_addr, str(r.kind), int(r.refused), r.last_at)
            for r in conn.execute(stmt)
        ]


def count_entries(engine: Engine, query: AuditQuery) -> int:
    stmt = select(func.count()).select_from(_filtered(query).subquery())
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def iter_entries(engine: Engine, query: AuditQuery, batch: int = 1000) -> Iterator[AuditRecord]:
    """Every matching entry, oldest first, streamed (for exports; paging fields ignored)."""
    stmt = _filtered(query).order_by(AuditEntry.id.asc()).execution_options(yield_per=batch)
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            yield _record(row)
