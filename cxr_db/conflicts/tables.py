"""The conflicts domain's table, ``instance_conflicts`` (revisions 0007, 0016)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base


class ConflictKind(StrEnum):
    """Why an instance was refused as a conflict."""

    #: Its SOP Instance UID is already stored with other content (revision 0007).
    CONTENT = "content"
    #: Its study is already stored for another patient (revision 0016).
    PATIENT = "patient"


class InstanceConflict(Base):
    """An instance refused as a conflict: its SOP Instance UID already stored with other
    content (kind ``content``, migration 0007; ``instance_id`` is the stored one), or its
    study already stored for another patient (kind ``patient``, migration 0016; no
    instance row, ``study_id`` the study, ``differing`` the attribute keywords). What is
    stored stays as it is; this row is the visible event until a person resolves it."""

    __tablename__ = "instance_conflicts"
    __table_args__ = (
        CheckConstraint("kind IN ('content', 'patient')", name="instance_conflicts_kind_valid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16), server_default=ConflictKind.CONTENT.value)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), index=True
    )
    #: Patient conflicts: the identifying attributes that differ, by keyword (no values).
    differing: Mapped[str | None] = mapped_column(String(200))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    #: The Study Instance UID the refused copy named (may differ from the stored one's).
    received_study_instance_uid: Mapped[str] = mapped_column(String(64))
    stored_content_sha256: Mapped[str | None] = mapped_column(String(64))
    received_content_sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
