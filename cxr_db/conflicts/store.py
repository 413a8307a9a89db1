"""Refused duplicates: a SOP Instance UID received again with different content.

The listener refuses such a C-STORE (0x0111 Duplicate SOP Instance) and records one row
here per refusal (migration 0007), so the conflict is visible to staff and operators
while the stored instance, its row and its prediction stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select

from cxr_db.conflicts.tables import InstanceConflict


@dataclass(frozen=True)
class Conflict:
    instance_id: int
    sop_instance_uid: str
    received_study_instance_uid: str
    stored_content_sha256: str | None
    received_content_sha256: str
    calling_ae_title: str | None
    peer_address: str | None
    received_at: datetime | None = None


def record_conflict(engine: Engine, conflict: Conflict) -> None:
    """Append one refused duplicate."""
    with engine.begin() as conn:
        conn.execute(
            insert(InstanceConflict).values(
                instance_id=conflict.instance_id,
                sop_instance_uid=conflict.sop_instance_uid,
                received_study_instance_uid=conflict.received_study_instance_uid,
                stored_content_sha256=conflict.stored_content_sha256,
                received_content_sha256=conflict.received_content_sha256,
                calling_ae_title=conflict.calling_ae_title,
                peer_address=conflict.peer_address,
            )
        )


def conflicts(engine: Engine, limit: int = 1000) -> list[Conflict]:
    """The most recent refused duplicates, newest first."""
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
            )
            .order_by(c.received_at.desc(), c.id.desc())
            .limit(limit)
        ).all()
    return [Conflict(*row) for row in rows]
