"""HL7 results to the RIS (issue 18, part 2): ``hl7_sends``, every attempt to deliver a
study result version's ORU^R01 to one MLLP receiver, with the ACK code and the reason; at
most one ``accepted`` row per (study, result version, destination).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Frozen copy of the vocabulary as of this revision.
HL7_SEND_STATUSES = ("accepted", "failed")


def upgrade() -> None:
    op.create_table(
        "hl7_sends",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "study_id",
            sa.BigInteger,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("result_version", sa.Integer, nullable=False),
        sa.Column("destination", sa.String(300), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message_control_id", sa.String(20), nullable=False),
        sa.Column("ack_code", sa.String(2)),
        sa.Column("error", sa.Text),
        sa.Column(
            "at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in HL7_SEND_STATUSES) + ")",
            name="hl7_sends_status_valid",
        ),
    )
    op.create_index(
        "ix_hl7_sends_study", "hl7_sends", ["study_id", "result_version", "destination"]
    )
    op.create_index(
        "uq_hl7_sends_accepted",
        "hl7_sends",
        ["study_id", "result_version", "destination"],
        unique=True,
        postgresql_where=sa.text("status = 'accepted'"),
    )


def downgrade() -> None:
    op.drop_table("hl7_sends")
