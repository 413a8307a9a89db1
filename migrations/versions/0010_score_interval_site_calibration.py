"""Uncertainty on every score and recalibration before promotion.

``predictions.score_lower`` / ``score_upper``: the calibrated score's interval
(``cxr_model.calibration.ScoreInterval``; NULL for predictions made before, or with a
calibration without one). ``models.calibration_source``: ``shipped`` (the file registered with
the model folder) or ``site`` (fitted for that version on the site's own answers by
``cxr-triage calibrate --from-shadow``), and ``calibration_n``, the answered studies it was
fitted on. Models registered before keep ``shipped``: ``model activate`` asks a model that
was never active here for a site calibration or ``--accept-shipped-calibration``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen copy of cxr_db.models.CalibrationSource as of this revision.
CALIBRATION_SOURCES = ("shipped", "site")


def upgrade() -> None:
    op.add_column("predictions", sa.Column("score_lower", sa.Float))
    op.add_column("predictions", sa.Column("score_upper", sa.Float))
    op.create_check_constraint(
        "predictions_score_interval_valid",
        "predictions",
        "(score_lower IS NULL) = (score_upper IS NULL) AND (score_lower IS NULL OR "
        "(0 <= score_lower AND score_lower <= probability AND probability <= score_upper "
        "AND score_upper <= 1))",
    )
    op.add_column(
        "models",
        sa.Column("calibration_source", sa.String(16), nullable=False, server_default="shipped"),
    )
    op.add_column("models", sa.Column("calibration_n", sa.Integer))
    op.create_check_constraint(
        "models_calibration_source_valid",
        "models",
        "calibration_source IN (" + ", ".join(f"'{v}'" for v in CALIBRATION_SOURCES) + ")",
    )


def downgrade() -> None:
    op.drop_constraint("models_calibration_source_valid", "models", type_="check")
    op.drop_column("models", "calibration_n")
    op.drop_column("models", "calibration_source")
    op.drop_constraint("predictions_score_interval_valid", "predictions", type_="check")
    op.drop_column("predictions", "score_upper")
    op.drop_column("predictions", "score_lower")
