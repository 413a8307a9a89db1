"""Sign-in lock-outs per (account, client address) and API token expiry (issue 20).

``sign_in_locks`` replaces ``users.failed_logins`` and ``users.locked_until``: wrong
passwords from one client address lock the account for that address only, so a flood from
one place cannot keep the real user, signing in from elsewhere, out. ``api_tokens``
gains ``expires_at`` (NULL: existing tokens never expire until revoked).

Revision ID: 0017
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_locks",
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("client_addr", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint("failures >= 0", name="sign_in_locks_failures_nonnegative"),
    )
    op.create_index("ix_sign_in_locks_locked_until", "sign_in_locks", ["locked_until"])
    op.drop_constraint("users_failed_logins_nonnegative", "users", type_="check")
    op.drop_column("users", "failed_logins")
    op.drop_column("users", "locked_until")
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("api_tokens", "expires_at")
    op.add_column("users", sa.Column("locked_until", sa.DateTime(timezone=True)))
    op.add_column(
        "users", sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0")
    )
    op.create_check_constraint("users_failed_logins_nonnegative", "users", "failed_logins >= 0")
    op.drop_index("ix_sign_in_locks_locked_until", table_name="sign_in_locks")
    op.drop_table("sign_in_locks")
