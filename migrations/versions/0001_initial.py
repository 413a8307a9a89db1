"""Initial schema: studies, instances, predictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("received", "queued", "processing", "done", "not_eligible", "failed")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("accession_number", sa.String(64)),
        sa.Column("flagged", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("score", sa.Float),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("study_id", sa.BigInteger, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64)),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part", sa.String(64)),
        sa.Column("view_position", sa.String(16)),
        sa.Column("calling_ae_title", sa.String(16)),
        sa.Column("storage_uri", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="received"),
        sa.Column("reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("enqueued_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name="instances_status_valid"
        ),
    )
    op.create_index("ix_instances_study_id", "instances", ["study_id"])
    op.create_index("ix_instances_status_received", "instances", ["status", "received_at"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("instance_id", sa.BigInteger, sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("calibration_version", sa.String(64)),
        sa.Column("logit", sa.Float, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("heatmap_png", sa.LargeBinary),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("decode_ms", sa.Float, nullable=False),
        sa.Column("inference_ms", sa.Float, nullable=False),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("instance_id", "model_version", name="uq_prediction"),
    )
    op.create_index("ix_predictions_instance_id", "predictions", ["instance_id"])


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("instances")
    op.drop_table("studies")
