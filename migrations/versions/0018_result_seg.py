"""The heatmap Segmentation's C-STORE/STOW outcome on each result send attempt (issue 18).

``result_sends`` recorded the SC and SR of an attempt; a destination may now also get the
heatmap as a FRACTIONAL Segmentation, whose SOP Instance UID and status are recorded the
same way (NULL when the destination takes no SEG, or the study had no heatmap).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("result_sends", sa.Column("seg_sop_instance_uid", sa.String(64)))
    op.add_column("result_sends", sa.Column("seg_status", sa.Integer()))


def downgrade() -> None:
    op.drop_column("result_sends", "seg_status")
    op.drop_column("result_sends", "seg_sop_instance_uid")
