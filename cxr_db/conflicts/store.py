"""Refused conflicts: what a sender sent that contradicts what is stored.

Two kinds (:class:`~cxr_db.conflicts.tables.ConflictKind`):

* ``content``: a SOP Instance UID received again with different content (the listener
  answers 0x0111 Duplicate SOP Instance; migration 0007);
* ``patient``: an instance of a study already stored for another patient (0xC230;
  migration 0016): ``differing`` names the identifying attributes that differ (keywords,
  never values).

One row per refusal (a patient conflict resent unchanged: one row until it is resolved),
so the conflict is visible to staff and operators (worklist and ops page,
:func:`open_conflicts`) while what is stored stays as it was, until a person resolves it
(:func:`resolve_conflict`, ``cxr-triage conflicts resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, update

from cxr_db.conflicts.tables import ConflictKind, InstanceConflict


@dataclass(frozen=True)
class Conflict:
    instance_id: int | None
    sop_instance_uid: str
    received_study_instance_uid: str
    stored_content_sha256: str | None
    received_content_sha256: str
    calling_ae_title: str | None
    peer_address: str | None
    received_at: datetime | None = None
    kind: ConflictKind = ConflictKind.CONTENT
    study_id: int | None = None
    #: Patient conflicts: the differing attribute keywords, comma-separated.
    differing: str | None = None


@dataclass(frozen=True)
class OpenConflict:
    """An unresolved conflict as the worklist and the ops page show it (no patient data)."""

    id: int
    kind: ConflictKind
    study_instance_uid: str
    sop_instance_uid: str
    differing: str | None
    calling_ae_title: str | None
    peer_address: str | None
    received_at: datetime


def record_conflict(engine: Engine, conflict: Conflict) -> None:
    """Append one refused conflict. A patient conflict resent unchanged while it is
    unresolved (a sender retrying the refused instance) adds no second row."""
    c = InstanceConflict
    with engine.begin() as conn:
        if conflict.kind is ConflictKind.PATIENT:
            conn.execute(
                select(
                    func.pg_advisory_xact_lock(func.hashtextextended(conflict.sop_instance_uid, 1))
                )
            )
            known = conn.execute(
                select(c.id).where(
                    c.kind == ConflictKind.PATIENT.value,
                    c.resolved_at.is_(None),
                    c.sop_instance_uid == conflict.sop_instance_uid,
                    c.received_study_instance_uid == conflict.received_study_instance_uid,
                    c.received_content_sha256 == conflict.received_content_sha256,
                )
            ).first()
            if known is not None:
                return
        conn.execute(
            insert(InstanceConflict).values(
                instance_id=conflict.instance_id,
                kind=conflict.kind.value,
                study_id=conflict.study_id,
                differing=conflict.differing,
                sop_instance_uid=conflict.sop_instance_uid,
                received_study_instance_uid=conflict.received_study_instance_uid,
                stored_content_sha256=conflict.stored_content_sha256,
                received_content_sha256=conflict.received_content_sha256,
                calling_ae_title=conflict.calling_ae_title,
                peer_address=conflict.peer_address,
            )
        )


def conflicts(engine: Engine, limit: int = 1000) -> list[Conflict]:
    """The most recent refused conflicts, newest first."""
    c = InstanceConflict
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                c.instance_id,
                c.sop_instance_uid,
                c.received_study_instance_uid,
                c.stored_content_sha256,
                c.received_content_sha256,
                c.calling_ae_title,
                c.peer_address,
                c.received_at,
                c.kind,
                c.study_id,
                c.differing,
            )
            .order_by(c.received_at.desc(), c.id.desc())
            .limit(limit)
        ).all()
    return [Conflict(*row[:8], ConflictKind(row.kind), *row[9:]) for row in rows]


def open_conflicts(
    engine: Engine, kinds: tuple[ConflictKind, ...] = tuple(ConflictKind), limit: int = 100
) -> list[OpenConflict]:
    """Unresolved conflicts of ``kinds``, newest first."""
    c = InstanceConflict
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                c.id,
                c.kind,
                c.received_study_instance_uid,
                c.sop_instance_uid,
                c.differing,
                c.calling_ae_title,
                c.peer_address,
                c.received_at,
            )
            .where(c.resolved_at.is_(None), c.kind.in_([k.value for k in kinds]))
            .order_by(c.received_at.desc(), c.id.desc())
            .limit(limit)
        ).all()
    return [OpenConflict(r[0], ConflictKind(r[1]), *r[2:]) for r in rows]


def resolve_conflict(engine: Engine, conflict_id: int, resolved_by: str) -> bool:
    """Mark one conflict resolved by ``resolved_by``; False when it is unknown or was
    resolved already."""
    c = InstanceConflict
    with engine.begin() as conn:
        done = conn.execute(
            update(c)
            .where(c.id == conflict_id, c.resolved_at.is_(None))
            .values(resolved_at=func.now(), resolved_by=resolved_by[:64])
            .returning(c.id)
        ).scalar_one_or_none()
    return done is not None
