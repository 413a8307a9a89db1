"""The conflicts domain's table, ``instance_conflicts`` (revision 0007)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base


class InstanceConflict(Base):
    """A C-STORE refused because its SOP Instance UID is already stored with other content
    (migration 0007): the stored instance stays as it is; this row is the visible event."""

    __tablename__ = "instance_conflicts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
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
