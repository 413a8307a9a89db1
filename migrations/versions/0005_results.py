"""Results back to PACS: per-study result state and version, and every send attempt.

``studies`` gains result_state (receiving | complete | results_sent | results_failed),
result_version (1, 2, ...), last_instance_at, completed_at and results_enqueued_at.
Studies that exist before this revision are marked ``complete`` (version 1, already
"enqueued"), so upgrading never sends results for old studies.

An ``AFTER INSERT`` trigger on ``instances`` stamps the study's last_instance_at and, when
the study was no longer receiving, reopens it with result_version + 1: every writer of
instances (listener, tests, a future importer) gets the rule from Postgres.

``result_sends``: one row per attempt to store a result version's Secondary Capture and
SR on one destination, with the DICOM statuses; a partial unique index allows one ``sent``
row per (study, result version, destination).

Revision ID: 0005
Revises: 0002 (the lead re-chains)
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of cxr_db.result_states as of this revision.
RESULT_STATES = ("receiving", "complete", "results_sent", "results_failed")
SEND_STATUSES = ("sent", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    now = sa.text("now()")
    op.add_column(
        "studies", sa.Column("result_state", sa.String(16), nullable=False, server_default="receiving")
    )
    op.add_column(
        "studies", sa.Column("result_version", sa.Integer, nullable=False, server_default="1")
    )
    op.add_column(
        "studies",
        sa.Column("last_instance_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.add_column("studies", sa.Column("completed_at", sa.DateTime(timezone=True)))
    op.add_column("studies", sa.Column("results_enqueued_at", sa.DateTime(timezone=True)))
    op.create_check_constraint("studies_result_state_valid", "studies", _in("result_state", RESULT_STATES))
    op.execute(
        """
        UPDATE studies s SET result_state = 'complete', completed_at = now(),
            results_enqueued_at = now(),
            last_instance_at = coalesce(
                (SELECT max(i.received_at) FROM instances i WHERE i.study_id = s.id),
                s.first_received_at)
        """
    )
    op.create_index("ix_studies_result_state", "studies", ["result_state", "last_instance_at"])
    op.execute(
        """
        CREATE FUNCTION cxr_instance_arrived() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE studies SET
                last_instance_at = now(),
                result_version = CASE WHEN result_state <> 'receiving'
                                      THEN result_version + 1 ELSE result_version END,
                result_state = 'receiving',
                completed_at = NULL,
                results_enqueued_at = NULL
            WHERE id = NEW.study_id;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER instances_arrival AFTER INSERT ON instances "
        "FOR EACH ROW EXECUTE FUNCTION cxr_instance_arrived()"
    )

    op.create_table(
        "result_sends",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("study_id", sa.BigInteger, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("result_version", sa.Integer, nullable=False),
        sa.Column("destination", sa.String(300), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sc_sop_instance_uid", sa.String(64)),
        sa.Column("sr_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sc_status", sa.Integer),
        sa.Column("sr_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.CheckConstraint(_in("status", SEND_STATUSES), name="result_sends_status_valid"),
    )
    op.create_index(
        "ix_result_sends_study", "result_sends", ["study_id", "result_version", "destination"]
    )
    op.create_index(
        "uq_result_sends_sent",
        "result_sends",
        ["study_id", "result_version", "destination"],
        unique=True,
        postgresql_where=sa.text("status = 'sent'"),
    )


def downgrade() -> None:
    op.drop_table("result_sends")
    op.execute("DROP TRIGGER IF EXISTS instances_arrival ON instances")
    op.execute("DROP FUNCTION IF EXISTS cxr_instance_arrived()")
    op.drop_index("ix_studies_result_state", table_name="studies")
    op.drop_constraint("studies_result_state_valid", "studies", type_="check")
    for column in ("results_enqueued_at", "completed_at", "last_instance_at", "result_version", "result_state"):
        op.drop_column("studies", column)
