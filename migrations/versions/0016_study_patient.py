"""A study's patient, fixed by its first instance; patient conflicts (issue 20).

``studies.patient_identity`` (JSONB) holds keyed hashes of the identifying attributes of
the study's first instance (``cxr_ingest.identity``: Patient ID, Issuer of Patient ID,
name, birth date, sex; no values). A later instance naming another patient is refused
and leaves an ``instance_conflicts`` row of kind ``patient`` (its ``study_id``, the
attributes that differ by keyword, no instance row: nothing was stored). NULL for
studies received before this revision: their next instance fixes it.

``instance_conflicts.kind`` is ``content`` (the same SOP Instance UID with other
content, revision 0007) or ``patient``; ``instance_id`` is NULL for a patient conflict.
``resolved_at`` / ``resolved_by``: when a person marked the conflict resolved
(``cxr-triage conflicts resolve``); unresolved ones are shown on the worklist and the
ops page.

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("patient_identity", JSONB))
    op.add_column(
        "instance_conflicts",
        sa.Column("kind", sa.String(16), nullable=False, server_default="content"),
    )
    op.create_check_constraint(
        "instance_conflicts_kind_valid", "instance_conflicts", "kind IN ('content', 'patient')"
    )
    op.alter_column("instance_conflicts", "instance_id", nullable=True)
    op.add_column(
        "instance_conflicts",
        sa.Column("study_id", sa.BigInteger, sa.ForeignKey("studies.id", ondelete="CASCADE")),
    )
    op.create_index("ix_instance_conflicts_study_id", "instance_conflicts", ["study_id"])
    op.add_column("instance_conflicts", sa.Column("differing", sa.String(200)))
    op.add_column("instance_conflicts", sa.Column("resolved_at", sa.DateTime(timezone=True)))
    op.add_column("instance_conflicts", sa.Column("resolved_by", sa.String(64)))


def downgrade() -> None:
    op.execute("DELETE FROM instance_conflicts WHERE kind <> 'content'")
    op.drop_column("instance_conflicts", "resolved_by")
    op.drop_column("instance_conflicts", "resolved_at")
    op.drop_column("instance_conflicts", "differing")
    op.drop_index("ix_instance_conflicts_study_id", table_name="instance_conflicts")
    op.drop_column("instance_conflicts", "study_id")
    op.alter_column("instance_conflicts", "instance_id", nullable=False)
    op.drop_constraint("instance_conflicts_kind_valid", "instance_conflicts")
    op.drop_column("instance_conflicts", "kind")
    op.drop_column("studies", "patient_identity")
