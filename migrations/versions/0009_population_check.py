"""Which check decided an instance's population, and the image's distance.

``instances.population_check`` says which check decided the instance's population
(``cxr_common.population.PopulationCheck``): ``header`` (age, view, modality), ``image``
(the image is unlike the validated population: its pooled features lie beyond the
distribution check's threshold) or ``both``. ``instances.image_distance`` is the distance of
the active model's pooled features from its training distribution (NULL when the model
ships no distribution check, and for rows recorded before this revision).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen copy of cxr_common.population.PopulationCheck as of this revision.
CHECKS = ("header", "image", "both")


def upgrade() -> None:
    op.add_column("instances", sa.Column("population_check", sa.String(8)))
    op.add_column("instances", sa.Column("image_distance", sa.Float))
    op.create_check_constraint(
        "instances_population_check_valid",
        "instances",
        "population_check IS NULL OR population_check IN ("
        + ", ".join(f"'{c}'" for c in CHECKS)
        + ")",
    )


def downgrade() -> None:
    op.drop_constraint("instances_population_check_valid", "instances", type_="check")
    op.drop_column("instances", "image_distance")
    op.drop_column("instances", "population_check")
