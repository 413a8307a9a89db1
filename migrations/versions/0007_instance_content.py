"""Same SOP Instance UID, different content: the content hash and the refusals.

``instances.content_sha256`` is the sha256 of the received data set (transfer syntax UID
and the bytes after File Meta), NULL for rows recorded before this revision. A C-STORE
whose SOP Instance UID is already recorded with another hash is refused (0x0111) and
leaves one ``instance_conflicts`` row: the visible event. The stored instance, its row
and its prediction stay untouched.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("content_sha256", sa.String(64)))
    op.create_table(
        "instance_conflicts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "instance_id",
            sa.BigInteger,
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("received_study_instance_uid", sa.String(64), nullable=False),
        sa.Column("stored_content_sha256", sa.String(64)),
        sa.Column("received_content_sha256", sa.String(64), nullable=False),
        sa.Column("calling_ae_title", sa.String(16)),
        sa.Column("peer_address", sa.String(64)),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_instance_conflicts_instance_id", "instance_conflicts", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_instance_conflicts_instance_id", table_name="instance_conflicts")
    op.drop_table("instance_conflicts")
    op.drop_column("instances", "content_sha256")
