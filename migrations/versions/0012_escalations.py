"""Escalation of flagged studies left unread (issue 19): the decisions and their outbox.

``escalations``: one row per (study, escalation number) with the webhook payload;
``escalation_deliveries``: the transactional outbox, one row per (escalation, webhook),
written in the scheduler's transaction and delivered by the results sender;
``escalation_attempts``: every POST tried. The audit log's actor kinds gain ``system``
(the scheduler and the results sender record escalations and deliveries).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Frozen copies of the vocabularies as of this revision.
DELIVERY_STATES = ("pending", "delivered", "failed", "cancelled")
ACTOR_KINDS_BEFORE = ("user", "token", "cli", "anonymous")
ACTOR_KINDS = (*ACTOR_KINDS_BEFORE, "system")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _actor_kinds(values: tuple[str, ...]) -> None:
    op.drop_constraint("audit_log_actor_kind_valid", "audit_log", type_="check")
    op.create_check_constraint("audit_log_actor_kind_valid", "audit_log", _in("actor_kind", values))


def upgrade() -> None:
    now = sa.text("now()")
    op.create_table(
        "escalations",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "study_id",
            sa.BigInteger,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("clock_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("unread_for_s", sa.Float, nullable=False),
        sa.Column("payload", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.UniqueConstraint("study_id", "number", name="uq_escalations_study_number"),
    )
    op.create_index("ix_escalations_escalated_at", "escalations", ["escalated_at"])
    op.create_table(
        "escalation_deliveries",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "escalation_id",
            sa.BigInteger,
            sa.ForeignKey("escalations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("webhook", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=now
        ),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.CheckConstraint(_in("state", DELIVERY_STATES), name="escalation_deliveries_state_valid"),
        sa.UniqueConstraint("escalation_id", "webhook", name="uq_escalation_deliveries_webhook"),
    )
    op.create_index(
        "ix_escalation_deliveries_due", "escalation_deliveries", ["state", "next_attempt_at"]
    )
    op.create_table(
        "escalation_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "delivery_id",
            sa.BigInteger,
            sa.ForeignKey("escalation_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.create_index(
        "ix_escalation_attempts_delivery", "escalation_attempts", ["delivery_id", "attempt"]
    )
    _actor_kinds(ACTOR_KINDS)


def downgrade() -> None:
    # audit rows by the system actor stay (the log is append-only): the old check would
    # refuse them, so it comes back NOT VALID (checked for new rows only)
    op.drop_constraint("audit_log_actor_kind_valid", "audit_log", type_="check")
    op.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT audit_log_actor_kind_valid CHECK ("
        + _in("actor_kind", ACTOR_KINDS_BEFORE)
        + ") NOT VALID"
    )
    op.drop_table("escalation_attempts")
    op.drop_table("escalation_deliveries")
    op.drop_table("escalations")
