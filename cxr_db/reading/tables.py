"""The reading domain's tables (revision ``0002_reading_workflow``).

    users 1─* answers *─1 studies   what a radiologist answered, with the model output seen
    studies 1─1 study_reads         read state per study (no row = unread)

Every closed vocabulary (read state, finding; the accounts' role and the audit's action
and actor kind in their own domains) is a ``StrEnum`` defined once; the migration builds
its CHECK constraints from the same values.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class ReadState(enum.StrEnum):
    UNREAD = "unread"
    IN_PROGRESS = "in_progress"  # claimed by a user until the claim expires
    READ = "read"


class Finding(enum.StrEnum):
    """A radiologist's answer for a study."""

    PNEUMONIA = "pneumonia"
    NO_PNEUMONIA = "no_pneumonia"
    OTHER = "other"


class StudyRead(Base):
    """Read state of one study. A study without a row is unread; an ``in_progress`` row
    whose ``claim_expires_at`` has passed counts as unread (anyone may claim it)."""

    __tablename__ = "study_reads"
    __table_args__ = (
        CheckConstraint(check_in("state", ReadState), name="study_reads_state_valid"),
        CheckConstraint(
            "state <> 'in_progress' OR (claimed_by IS NOT NULL AND claim_expires_at IS NOT NULL)",
            name="study_reads_claim_complete",
        ),
        CheckConstraint(
            "state <> 'read' OR (read_at IS NOT NULL AND num_nonnulls(read_by, read_by_token) = 1)",
            name="study_reads_read_complete",
        ),
        Index("ix_study_reads_state", "state"),
    )

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16), default=ReadState.UNREAD.value)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    read_by_token: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Answer(Base):
    """One answer: by a signed-in user or, through the API, by a token (exactly one)."""

    __tablename__ = "answers"
    __table_args__ = (
        CheckConstraint(check_in("finding", Finding), name="answers_finding_valid"),
        CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="answers_score_range"),
        CheckConstraint("num_nonnulls(user_id, token_id) = 1", name="answers_one_reader"),
        Index("ix_answers_study_created", "study_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    finding: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
