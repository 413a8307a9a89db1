"""The patient context on the instance row, read once at ingest.

``instances.patient_context`` (JSONB) holds what the study page shows: PatientName,
PatientID, PatientSex, StudyDate, BodyPartExamined, ViewPosition, BurnedInAnnotation
(cleaned text) and ``age_years`` (derived at ingest; the birth date is not kept). It is
written from the one header parse of ingest, so the web app no longer reads the stored
file on every study view. NULL for rows received before this revision (the study page
reads their header, bounded, as before). Never logged; not in any export.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("patient_context", JSONB))


def downgrade() -> None:
    op.drop_column("instances", "patient_context")
