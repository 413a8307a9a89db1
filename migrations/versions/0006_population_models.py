"""Intended population and model registry: population on instances, triage and model role on
predictions, the ``models`` registry (one active model) and the strata a site enabled.

Existing predictions were all made by the one model the worker loaded, in the role that
triages: they keep ``triage = true`` and ``model_role = 'active'``. The shipped model is
registered by ``cxr-triage migrate`` (or the first worker), which reads its folder.

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of the StrEnums as of this revision (cxr_common.population, cxr_db.models).
POPULATIONS = ("in_scope", "outside", "unknown")
MODEL_STATES = ("registered", "shadow", "active", "retired")
MODEL_ROLES = ("active", "shadow")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.add_column("instances", sa.Column("population", sa.String(16)))
    op.add_column("instances", sa.Column("population_reason", sa.Text))
    op.create_check_constraint(
        "instances_population_valid",
        "instances",
        "population IS NULL OR " + _in("population", POPULATIONS),
    )
    op.add_column(
        "predictions",
        sa.Column("triage", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.add_column(
        "predictions",
        sa.Column("model_role", sa.String(8), nullable=False, server_default="active"),
    )
    op.create_check_constraint(
        "predictions_model_role_valid", "predictions", _in("model_role", MODEL_ROLES)
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])

    op.create_table(
        "models",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("version", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("calibration_uri", sa.Text, nullable=False),
        sa.Column("calibration_version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column(
            "registered_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True)),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("reference", JSONB),
        sa.CheckConstraint(_in("state", MODEL_STATES), name="models_state_valid"),
    )
    # Exactly one active model: no second row may have state 'active'.
    op.create_index(
        "uq_models_one_active",
        "models",
        ["state"],
        unique=True,
        postgresql_where=sa.text("state = 'active'"),
    )

    op.create_table(
        "population_strata",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("stratum", sa.String(64), nullable=False, unique=True),
        sa.Column("dimension", sa.String(16), nullable=False),
        sa.Column("value", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("calibration_version", sa.String(64), nullable=False),
        sa.Column("validation_sha256", sa.String(64), nullable=False),
        sa.Column("data_hash", sa.String(64)),
        sa.Column("positives", sa.Integer, nullable=False),
        sa.Column("sensitivity_lower", sa.Float, nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )


def downgrade() -> None:
    op.drop_table("population_strata")
    op.drop_index("uq_models_one_active", table_name="models")
    op.drop_table("models")
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_constraint("predictions_model_role_valid", "predictions", type_="check")
    op.drop_column("predictions", "model_role")
    op.drop_column("predictions", "triage")
    op.drop_constraint("instances_population_valid", "instances", type_="check")
    op.drop_column("instances", "population_reason")
    op.drop_column("instances", "population")
