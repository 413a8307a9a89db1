"""The escalation domain's tables (revision ``0012``).

    studies 1─* escalations 1─* escalation_deliveries 1─* escalation_attempts

``escalations``: one row per (study, escalation number), written by the scheduler when a
flagged study stayed unread too long, with the webhook payload it decided on (no patient
name or ID). ``escalation_deliveries``: the outbox, one row per (escalation, webhook),
written in the same transaction; the results sender delivers it. ``escalation_attempts``:
every POST tried, with its HTTP status or error.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # due at next_attempt_at (first try or a retry)
    DELIVERED = "delivered"  # the webhook answered 2xx
    FAILED = "failed"  # every attempt failed: given up
    CANCELLED = "cancelled"  # the study was opened before it was delivered: not sent


class Escalation(Base):
    """One escalation of one study: the ``number``-th since it was first flagged."""

    __tablename__ = "escalations"
    __table_args__ = (
        UniqueConstraint("study_id", "number", name="uq_escalations_study_number"),
        Index("ix_escalations_escalated_at", "escalated_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    clock_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the study was flagged, or released unanswered since (the later)."""
    escalated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    unread_for_s: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )


class EscalationDelivery(Base):
    """The outbox: one escalation to one webhook, until delivered or given up."""

    __tablename__ = "escalation_deliveries"
    __table_args__ = (
        CheckConstraint(check_in("state", DeliveryState), name="escalation_deliveries_state_valid"),
        UniqueConstraint("escalation_id", "webhook", name="uq_escalation_deliveries_webhook"),
        Index("ix_escalation_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    escalation_id: Mapped[int] = mapped_column(ForeignKey("escalations.id", ondelete="CASCADE"))
    webhook: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(
        Text, default=DeliveryState.PENDING.value, server_default=DeliveryState.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EscalationAttempt(Base):
    """One POST of one delivery: its HTTP status (None: no answer) or error."""

    __tablename__ = "escalation_attempts"
    __table_args__ = (Index("ix_escalation_attempts_delivery", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("escalation_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
