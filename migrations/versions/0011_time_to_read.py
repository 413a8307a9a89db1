"""Time to read: an index on studies by arrival (the stats windows and the oldest-unread
gauges of cxr_db.reading.stats). Everything else is derived from existing rows.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_studies_first_received_at", "studies", ["first_received_at"])


def downgrade() -> None:
    op.drop_index("ix_studies_first_received_at", table_name="studies")
