"""The scoring lane of each instance (issue 19, part 3).

``instances.lane`` is ``urgent`` or ``normal`` (``cxr_queue.lanes``), chosen by the
listener when it records the instance (urgent calling AE title, STAT/HIGH priority in the
header); the reconciler re-enqueues a lost job into the same lane. Existing rows are
``normal``.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "instances",
        sa.Column("lane", sa.String(8), nullable=False, server_default="normal"),
    )


def downgrade() -> None:
    op.drop_column("instances", "lane")
