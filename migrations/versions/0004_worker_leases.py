"""Worker leases: who holds an instance being scored, and until when.

A worker claims an instance with ``SELECT ... FOR UPDATE SKIP LOCKED`` and stamps
``lease_owner`` (host:pid) and ``lease_expires_at``; it renews the lease every few
seconds while it works; anyone may reclaim an expired lease (the reconciler re-enqueues
it). The partial index serves the reconciler's two sweeps: pending instances with no
live message and ``processing`` instances whose lease has expired.

Revision ID: 0004
Revises: 0006 (chained after main's newest revision when main was merged; the number is
the one this change was given)
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("lease_owner", sa.String(128)))
    op.add_column("instances", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_instances_pending_lease",
        "instances",
        ["status", "lease_expires_at"],
        postgresql_where=sa.text("status IN ('received', 'queued', 'processing')"),
    )


def downgrade() -> None:
    op.drop_index("ix_instances_pending_lease", table_name="instances")
    op.drop_column("instances", "lease_expires_at")
    op.drop_column("instances", "lease_owner")
