"""Reading workflow: users, API tokens, web sessions, study read state, answers, audit log.

The audit log is append-only, enforced by Postgres: statement triggers raise on UPDATE,
DELETE and TRUNCATE, and are ``ENABLE ALWAYS`` so that ``session_replication_role =
replica`` does not switch them off either.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of the StrEnums in cxr_db.schema_reading as of this revision; a later
# revision that adds a value changes the CHECK constraint there.
ROLES = ("radiologist", "admin", "ops")
READ_STATES = ("unread", "in_progress", "read")
FINDINGS = ("pneumonia", "no_pneumonia", "other")
ACTOR_KINDS = ("user", "token", "cli", "anonymous")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(_in("role", ROLES), name="users_role_valid"),
        sa.CheckConstraint("failed_logins >= 0", name="users_failed_logins_nonnegative"),
    )
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(_in("role", ROLES), name="api_tokens_role_valid"),
    )
    op.create_index(
        "uq_api_tokens_active_name",
        "api_tokens",
        ["name"],
        unique=True,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column(
            "last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_addr", sa.String(64)),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])
    op.create_index("ix_web_sessions_expires_at", "web_sessions", ["expires_at"])

    op.create_table(
        "study_reads",
        sa.Column(
            "study_id",
            sa.BigInteger,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(16), nullable=False, server_default="unread"),
        sa.Column("claimed_by", sa.BigInteger, sa.ForeignKey("users.id")),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True)),
        sa.Column("read_by", sa.BigInteger, sa.ForeignKey("users.id")),
        sa.Column("read_by_token", sa.BigInteger, sa.ForeignKey("api_tokens.id")),
        sa.Column("read_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("state", READ_STATES), name="study_reads_state_valid"),
        sa.CheckConstraint(
            "state <> 'in_progress' OR (claimed_by IS NOT NULL AND claim_expires_at IS NOT NULL)",
            name="study_reads_claim_complete",
        ),
        sa.CheckConstraint(
            "state <> 'read' OR (read_at IS NOT NULL AND num_nonnulls(read_by, read_by_token) = 1)",
            name="study_reads_read_complete",
        ),
    )
    op.create_index("ix_study_reads_state", "study_reads", ["state"])

    op.create_table(
        "answers",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "study_id",
            sa.BigInteger,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id")),
        sa.Column("token_id", sa.BigInteger, sa.ForeignKey("api_tokens.id")),
        sa.Column("finding", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("model_version", sa.String(64)),
        sa.Column("score", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("finding", FINDINGS), name="answers_finding_valid"),
        sa.CheckConstraint(
            "score IS NULL OR (score >= 0 AND score <= 1)", name="answers_score_range"
        ),
        sa.CheckConstraint("num_nonnulls(user_id, token_id) = 1", name="answers_one_reader"),
    )
    op.create_index("ix_answers_user_id", "answers", ["user_id"])
    op.create_index("ix_answers_study_created", "answers", ["study_id", "created_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(200)),
        sa.Column("client_addr", sa.String(64)),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint(_in("actor_kind", ACTOR_KINDS), name="audit_log_actor_kind_valid"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor_at", "audit_log", ["actor", "at"])
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"])
    op.create_index("ix_audit_log_target", "audit_log", ["target"])

    op.execute(
        """
        CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()"
    )
    op.execute("ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_append_only")
    op.execute("ALTER TABLE audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate")


def downgrade() -> None:
    op.drop_table("audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_refuse_change()")
    op.drop_table("answers")
    op.drop_table("study_reads")
    op.drop_table("web_sessions")
    op.drop_table("api_tokens")
    op.drop_table("users")
