"""Escalation of flagged studies left unread: the clock, the decisions, the outbox.

The clock of a study starts when it was flagged (its first flagged prediction) and starts
again when someone releases it unanswered (or their claim expires): the later of the two.
While the study is flagged and unread (``cxr_db.reading.store.effective_state``) it is

* escalated for the first time ``after_s`` after its clock started, then
* again every ``repeat_s`` after its previous escalation in the same clock period,

until someone opens it (claims it: ``in_progress``) or answers it. Unflagged studies are
never escalated.

:func:`escalate_due` decides and writes, in one transaction, the escalation row, its
audit entry and one outbox row per webhook (``escalation_deliveries``), under a
transaction-scoped advisory lock so that several schedulers never escalate a study twice.
The results sender takes due outbox rows (:func:`take_due_deliveries`, a lease per row so
a crashed sender's row comes back), POSTs them and records every attempt
(:func:`record_attempt`): delivered, retried later, or given up.

Payloads hold no patient name or ID (study UID, accession, score, times, link, model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    func,
    insert,
    or_,
    select,
    update,
)

from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.escalations.tables import (
    DeliveryState,
    Escalation,
    EscalationAttempt,
    EscalationDelivery,
)
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.reading.store import effective_state
from cxr_db.reading.tables import ReadState, StudyRead

#: ``pg_advisory_xact_lock`` key of the escalation decision ("cxr-esc" in ASCII).
DECISION_LOCK_KEY = 0x6378722D657363

#: Who writes escalations and deliveries into the audit log.
SCHEDULER = Actor("scheduler", ActorKind.SYSTEM)
SENDER = Actor("results-sender", ActorKind.SYSTEM)

MAX_ERROR = 500


def webhook_label(url: str) -> str:
    """A webhook as people may see it (pages, audit): scheme, host and port only; the path
    and query of a webhook URL often carry its secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class DueStudy:
    """A study the scheduler escalates now (what its payload is made from)."""

    study_id: int
    study_instance_uid: str
    accession_number: str | None
    score: float | None
    flagged_at: datetime
    clock_started_at: datetime
    unread_for_s: float
    model_version: str | None
    number: int
    """1 for the study's first escalation, then 2, 3, ... (never reused)."""
    escalated_at: datetime


@dataclass(frozen=True)
class EscalationRecord:
    id: int
    study_instance_uid: str
    number: int
    deliveries: int


def _now(conn: Connection, now: datetime | None) -> datetime:
    if now is not None:
        return now
    value: datetime = conn.execute(select(func.now())).scalar_one()
    return value


def _clock(at: datetime) -> Select[Any]:
    """Flagged studies unread at ``at`` with their clock, over ``studies LEFT JOIN
    study_reads``: ``flagged_at``, ``clock_started_at`` and the newest escalation
    (``last_at``, ``last_number``). A flagged study that is not
    listed is being read or was answered."""
    flagged_at = (
        select(func.min(Prediction.created_at))
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(Instance.study_id == Study.id, Prediction.flagged)
        .scalar_subquery()
    )
    flagged_since = func.coalesce(flagged_at, Study.updated_at)
    released_at = case(
        (StudyRead.state == ReadState.UNREAD.value, StudyRead.updated_at),
        (
            and_(
                StudyRead.state == ReadState.IN_PROGRESS.value,
                StudyRead.claim_expires_at <= at,
            ),
            StudyRead.claim_expires_at,
        ),
    )
    model_version = (
        select(Prediction.model_version)
        .join(Instance, Instance.id == Prediction.instance_id)
        .where(Instance.study_id == Study.id, Prediction.triage)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    last_at = (
        select(func.max(Escalation.escalated_at))
        .where(Escalation.study_id == Study.id)
        .scalar_subquery()
    )
    last_number = (
        select(func.coalesce(func.max(Escalation.number), 0))
        .where(Escalation.study_id == Study.id)
        .scalar_subquery()
    )
    return (
        select(
            Study.id.label("study_id"),
            Study.study_instance_uid,
            Study.accession_number,
            Study.score,
            flagged_since.label("flagged_at"),
            func.greatest(flagged_since, released_at).label("clock_started_at"),
            model_version.label("model_version"),
            last_at.label("last_at"),
            last_number.label("last_number"),
        )
        .select_from(Study)
        .outerjoin(StudyRead, StudyRead.study_id == Study.id)
        # only the unread ones: the backlog, not every flagged study ever read
        .where(Study.flagged, effective_state(at) == ReadState.UNREAD.value)
    )


def _open(clock: Any) -> ColumnElement[bool]:
    """An escalation is open while its study is still unread (listed in ``_clock``) in the
    same clock period."""
    is_open: ColumnElement[bool] = clock.c.last_at >= clock.c.clock_started_at
    return is_open


def escalate_due(
    engine: Engine,
    *,
    after_s: float,
    repeat_s: float,
    webhooks: Sequence[str],
    payload: Callable[[DueStudy], Mapping[str, Any]],
    now: datetime | None = None,
    limit: int = 200,
) -> list[EscalationRecord]:
    """Escalate every flagged unread study that is due, in one transaction: the
    escalation (with ``payload(study)``), its audit entry and one outbox row per webhook.
    Returns what was escalated (nothing twice, whatever runs beside it)."""
    done: list[EscalationRecord] = []
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(DECISION_LOCK_KEY)))
        at = _now(conn, now)
        clock = _clock(at).subquery("clock")
        first_due = and_(
            or_(clock.c.last_at.is_(None), clock.c.last_at < clock.c.clock_started_at),
            clock.c.clock_started_at <= at - timedelta(seconds=after_s),
        )
        repeat_due = and_(
            clock.c.last_at >= clock.c.clock_started_at,
            clock.c.last_at <= at - timedelta(seconds=repeat_s),
        )
        rows = conn.execute(
            select(clock)
            .where(or_(first_due, repeat_due))
            .order_by(clock.c.clock_started_at, clock.c.study_id)
            .limit(limit)
        ).all()
        for row in rows:
            study = DueStudy(
                study_id=row.study_id,
                study_instance_uid=row.study_instance_uid,
                accession_number=row.accession_number,
                score=row.score,
                flagged_at=row.flagged_at,
                clock_started_at=row.clock_started_at,
                unread_for_s=round((at - row.clock_started_at).total_seconds(), 1),
                model_version=row.model_version,
                number=int(row.last_number) + 1,
                escalated_at=at,
            )
            done.append(_write(conn, study, dict(payload(study)), webhooks))
    return done


def _write(
    conn: Connection, study: DueStudy, body: dict[str, Any], webhooks: Sequence[str]
) -> EscalationRecord:
    escalation_id = conn.execute(
        insert(Escalation)
        .values(
            study_id=study.study_id,
            number=study.number,
            clock_started_at=study.clock_started_at,
            escalated_at=study.escalated_at,
            unread_for_s=study.unread_for_s,
            payload=body,
        )
        .returning(Escalation.id)
    ).scalar_one()
    urls = list(dict.fromkeys(webhooks))
    if urls:
        conn.execute(
            insert(EscalationDelivery),
            [
                {
                    "escalation_id": escalation_id,
                    "webhook": url,
                    "next_attempt_at": study.escalated_at,
                }
                for url in urls
            ],
        )
    audit.append(
        conn,
        AuditEvent(
            AuditAction.ESCALATION,
            SCHEDULER,
            study.study_instance_uid,
            {
                "escalation": study.number,
                "unread_for_s": study.unread_for_s,
                "webhooks": len(urls),
            },
        ),
    )
    return EscalationRecord(int(escalation_id), study.study_instance_uid, study.number, len(urls))


# ---------------------------------------------------------------------------------------
# Delivery (the results sender)


@dataclass(frozen=True)
class DueDelivery:
    """One outbox row taken for one attempt."""

    id: int
    escalation_id: int
    study_instance_uid: str
    number: int
    webhook: str
    attempt: int
    """1 for the first POST, then 2, 3, ..."""
    payload: dict[str, Any]


def take_due_deliveries(
    engine: Engine, *, lease_s: float, limit: int = 20, now: datetime | None = None
) -> list[DueDelivery]:
    """Take pending deliveries that are due, counting the attempt and pushing their next
    attempt ``lease_s`` away (a sender that dies mid-POST leaves them due again then)."""
    with engine.begin() as conn:
        at = _now(conn, now)
        due = (
            select(EscalationDelivery.id)
            .where(
                EscalationDelivery.state == DeliveryState.PENDING.value,
                EscalationDelivery.next_attempt_at <= at,
            )
            .order_by(EscalationDelivery.next_attempt_at, EscalationDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            update(EscalationDelivery)
            .where(
                EscalationDelivery.id.in_(due.scalar_subquery()),
                Escalation.id == EscalationDelivery.escalation_id,
                Study.id == Escalation.study_id,
            )
            .values(
                attempts=EscalationDelivery.attempts + 1,
                next_attempt_at=at + timedelta(seconds=lease_s),
            )
            .returning(
                EscalationDelivery.id,
                EscalationDelivery.escalation_id,
                Study.study_instance_uid,
                Escalation.number,
                EscalationDelivery.webhook,
                EscalationDelivery.attempts,
                Escalation.payload,
            )
        ).all()
    return [
        DueDelivery(
            id=r.id,
            escalation_id=r.escalation_id,
            study_instance_uid=r.study_instance_uid,
            number=r.number,
            webhook=r.webhook,
            attempt=r.attempts,
            payload=dict(r.payload),
        )
        for r in sorted(rows, key=lambda r: r.id)
    ]


def cancel_stale_deliveries(engine: Engine, *, now: datetime | None = None) -> int:
    """Cancel the pending deliveries whose study was opened (or answered) after its
    escalation: nobody is paged for a study already in a reader's hands. Audited; returns
    how many."""
    with engine.begin() as conn:
        at = _now(conn, now)
        clock = _clock(at).subquery("clock")
        stale = (
            select(EscalationDelivery.id)
            .join(Escalation, Escalation.id == EscalationDelivery.escalation_id)
            .outerjoin(clock, clock.c.study_id == Escalation.study_id)
            .where(
                EscalationDelivery.state == DeliveryState.PENDING.value,
                or_(
                    clock.c.study_id.is_(None),  # opened or answered
                    clock.c.clock_started_at > Escalation.escalated_at,  # released since
                ),
            )
        )
        rows = conn.execute(
            update(EscalationDelivery)
            .where(
                EscalationDelivery.id.in_(stale.scalar_subquery()),
                EscalationDelivery.state == DeliveryState.PENDING.value,
                Escalation.id == EscalationDelivery.escalation_id,
                Study.id == Escalation.study_id,
            )
            .values(state=DeliveryState.CANCELLED.value)
            .returning(
                Study.study_instance_uid,
                Escalation.number,
                EscalationDelivery.webhook,
                EscalationDelivery.attempts,
            )
        ).all()
        for r in rows:
            audit.append(
                conn,
                AuditEvent(
                    AuditAction.ESCALATION_DELIVERY,
                    SENDER,
                    r.study_instance_uid,
                    {
                        "escalation": r.number,
                        "webhook": webhook_label(r.webhook),
                        "attempt": r.attempts,
                        "outcome": DeliveryState.CANCELLED.value,
                        "http_status": None,
                    },
                ),
            )
    return len(rows)


def record_attempt(
    engine: Engine,
    delivery: DueDelivery,
    *,
    ok: bool,
    http_status: int | None,
    error: str | None,
    retry_in_s: float | None,
    now: datetime | None = None,
) -> DeliveryState:
    """Store one attempt and its outcome: delivered (``ok``), pending again in
    ``retry_in_s`` seconds, or failed (``retry_in_s`` None: retries exhausted). Audited."""
    error = error[:MAX_ERROR] if error else None
    if ok:
        state = DeliveryState.DELIVERED
    elif retry_in_s is not None:
        state = DeliveryState.PENDING
    else:
        state = DeliveryState.FAILED
    with engine.begin() as conn:
        at = _now(conn, now)
        conn.execute(
            insert(EscalationAttempt).values(
                delivery_id=delivery.id,
                attempt=delivery.attempt,
                ok=ok,
                http_status=http_status,
                error=error,
                at=at,
            )
        )
        values: dict[str, Any] = {
            "state": state.value,
            "last_status": http_status,
            "last_error": error,
        }
        if state is DeliveryState.DELIVERED:
            values["delivered_at"] = at
        if state is DeliveryState.PENDING and retry_in_s is not None:
            values["next_attempt_at"] = at + timedelta(seconds=retry_in_s)
        conn.execute(
            update(EscalationDelivery).where(EscalationDelivery.id == delivery.id).values(values)
        )
        audit.append(
            conn,
            AuditEvent(
                AuditAction.ESCALATION_DELIVERY,
                SENDER,
                delivery.study_instance_uid,
                {
                    "escalation": delivery.number,
                    "webhook": webhook_label(delivery.webhook),
                    "attempt": delivery.attempt,
                    "outcome": "retrying" if state is DeliveryState.PENDING else state.value,
                    "http_status": http_status,
                },
            ),
        )
    return state


# ---------------------------------------------------------------------------------------
# What the pages show


@dataclass(frozen=True)
class EscalationMark:
    """A worklist row's escalation: ``open`` while the study is still unread in the clock
    period of its newest escalation; ``count`` escalations so far."""

    open: bool
    count: int
    last_at: datetime | None


def escalation_marks(
    conn: Connection, study_ids: Iterable[int], *, now: datetime | None = None
) -> dict[int, EscalationMark]:
    """The escalation marks of a page of studies (studies never escalated are absent)."""
    ids = list(dict.fromkeys(study_ids))
    if not ids:
        return {}
    at = _now(conn, now)
    counts: dict[int, int] = {
        int(study_id): int(n)
        for study_id, n in conn.execute(
            select(Escalation.study_id, func.count())
            .where(Escalation.study_id.in_(ids))
            .group_by(Escalation.study_id)
        )
    }
    if not counts:
        return {}
    clock = _clock(at).where(Study.id.in_(list(counts))).subquery("clock")
    rows = conn.execute(select(clock.c.study_id, clock.c.last_at, _open(clock).label("open"))).all()
    marks = {
        r.study_id: EscalationMark(bool(r.open), int(counts[r.study_id]), r.last_at) for r in rows
    }
    for study_id, count in counts.items():  # no longer flagged cannot happen; kept closed
        marks.setdefault(study_id, EscalationMark(False, int(count), None))
    return marks


@dataclass(frozen=True)
class DeliveryInfo:
    webhook: str
    """:func:`webhook_label`: never the full URL."""
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    """When pending: the next attempt."""
    delivered_at: datetime | None


@dataclass(frozen=True)
class OpenEscalation:
    study_instance_uid: str
    accession_number: str | None
    score: float | None
    number: int
    escalated_at: datetime
    unread_for_s: float
    """At the escalation."""
    deliveries: tuple[DeliveryInfo, ...]


def open_escalations(
    engine: Engine, *, now: datetime | None = None, limit: int = 100
) -> list[OpenEscalation]:
    """Open escalations (studies still unread in the clock period of their newest
    escalation), oldest first, each with the delivery state of its newest escalation."""
    with engine.connect() as conn:
        at = _now(conn, now)
        clock = _clock(at).subquery("clock")
        rows = conn.execute(
            select(clock, Escalation.id.label("escalation_id"), Escalation.unread_for_s)
            .join(
                Escalation,
                and_(
                    Escalation.study_id == clock.c.study_id,
                    Escalation.number == clock.c.last_number,
                ),
            )
            .where(_open(clock))
            .order_by(clock.c.clock_started_at, clock.c.study_id)
            .limit(limit)
        ).all()
        deliveries: dict[int, list[DeliveryInfo]] = {}
        if rows:
            for d in conn.execute(
                select(EscalationDelivery.__table__)
                .where(EscalationDelivery.escalation_id.in_([r.escalation_id for r in rows]))
                .order_by(EscalationDelivery.id)
            ):
                pending = d.state == DeliveryState.PENDING.value
                deliveries.setdefault(d.escalation_id, []).append(
                    DeliveryInfo(
                        webhook=webhook_label(d.webhook),
                        state=DeliveryState(d.state),
                        attempts=d.attempts,
                        last_status=d.last_status,
                        last_error=d.last_error,
                        next_attempt_at=d.next_attempt_at if pending else None,
                        delivered_at=d.delivered_at,
                    )
                )
    return [
        OpenEscalation(
            study_instance_uid=r.study_instance_uid,
            accession_number=r.accession_number,
            score=r.score,
            number=int(r.last_number),
            escalated_at=r.last_at,
            unread_for_s=float(r.unread_for_s),
            deliveries=tuple(deliveries.get(r.escalation_id, ())),
        )
        for r in rows
    ]


def failing_deliveries(engine: Engine) -> int:
    """Deliveries given up, or pending after at least one failed attempt."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(EscalationDelivery)
                .where(
                    or_(
                        EscalationDelivery.state == DeliveryState.FAILED.value,
                        and_(
                            EscalationDelivery.state == DeliveryState.PENDING.value,
                            EscalationDelivery.last_error.is_not(None),
                        ),
                    )
                )
            ).scalar_one()
        )


#: Delivery outcomes of an escalation, as ``cxr_escalations_total{outcome}`` counts them.
OUTCOMES = ("delivered", "failed", "pending", "cancelled", "none")


@dataclass(frozen=True)
class MetricCounts:
    by_outcome: dict[str, int]
    """Every outcome of :data:`OUTCOMES`, zero included."""
    open: int


def metric_counts(engine: Engine) -> MetricCounts:
    """Escalations by delivery outcome (all time) and the open ones, for ``/metrics``."""
    states = EscalationDelivery.state
    outcome = case(
        (func.count(EscalationDelivery.id) == 0, "none"),
        (func.bool_or(states == DeliveryState.FAILED.value), "failed"),
        (func.bool_and(states == DeliveryState.DELIVERED.value), "delivered"),
        (
            func.bool_and(
                states.in_([DeliveryState.DELIVERED.value, DeliveryState.CANCELLED.value])
            ),
            "cancelled",
        ),
        else_="pending",
    )
    per = (
        select(outcome.label("outcome"))
        .select_from(Escalation)
        .outerjoin(EscalationDelivery, EscalationDelivery.escalation_id == Escalation.id)
        .group_by(Escalation.id)
        .subquery()
    )
    with engine.connect() as conn:
        counts = dict.fromkeys(OUTCOMES, 0)
        for name, n in conn.execute(select(per.c.outcome, func.count()).group_by(per.c.outcome)):
            counts[str(name)] = int(n)
        clock = _clock(_now(conn, None)).subquery("clock")
        open_now = conn.execute(
            select(func.count()).select_from(clock).where(_open(clock))
        ).scalar_one()
    return MetricCounts(counts, int(open_now))


__all__ = [
    "DueDelivery",
    "DueStudy",
    "EscalationMark",
    "EscalationRecord",
    "OpenEscalation",
    "cancel_stale_deliveries",
    "escalate_due",
    "escalation_marks",
    "failing_deliveries",
    "metric_counts",
    "open_escalations",
    "record_attempt",
    "take_due_deliveries",
    "webhook_label",
]
