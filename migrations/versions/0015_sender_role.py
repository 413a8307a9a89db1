"""The ``sender`` role: an API token that stores instances by STOW-RS and reads nothing
(issue 18, part 3).

``users.role`` and ``api_tokens.role`` CHECK constraints gain ``sender``; the application
gives it to tokens only (``cxr_db.accounts.store.USER_ROLES``). Downgrade refuses while a
token still has it (drop or revoke-and-delete those first): the old constraint would not
hold.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-06
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Frozen copies of cxr_db.accounts.tables.Role as of this revision and the one before.
ROLES_BEFORE = ("radiologist", "admin", "ops")
ROLES = ("radiologist", "admin", "ops", "sender")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _set_roles(roles: tuple[str, ...]) -> None:
    for table in ("users", "api_tokens"):
        op.drop_constraint(f"{table}_role_valid", table, type_="check")
        op.create_check_constraint(f"{table}_role_valid", table, _in("role", roles))


def upgrade() -> None:
    _set_roles(ROLES)


def downgrade() -> None:
    _set_roles(ROLES_BEFORE)
