"""The HL7 domain's table, ``hl7_sends`` (revision 0014): one row per attempt to deliver
one result version's ORU^R01 to one MLLP receiver, with the receiver's ACK code and
reason. No message text is kept (it carries the patient's name); the message control id
is."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class Hl7SendStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    """The receiver answered AA (or CA)."""
    FAILED = "failed"
    """AE / AR, no answer, a dropped connection or an answer that is no ACK of ours."""


class Hl7Send(Base):
    """One attempt to deliver one result version's message to one receiver."""

    __tablename__ = "hl7_sends"
    __table_args__ = (
        CheckConstraint(check_in("status", Hl7SendStatus), name="hl7_sends_status_valid"),
        Index("ix_hl7_sends_study", "study_id", "result_version", "destination"),
        # Exactly one accepted message per (study, result version, destination).
        Index(
            "uq_hl7_sends_accepted",
            "study_id",
            "result_version",
            "destination",
            unique=True,
            postgresql_where=text("status = 'accepted'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    result_version: Mapped[int] = mapped_column(Integer)
    destination: Mapped[str] = mapped_column(String(300))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    message_control_id: Mapped[str] = mapped_column(String(20))
    ack_code: Mapped[str | None] = mapped_column(String(2))
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
