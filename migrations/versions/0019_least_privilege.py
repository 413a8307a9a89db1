"""Least privilege (issue 20): one login role per process kind, granted only what it uses.

Creates ``cxr_listener``, ``cxr_scheduler``, ``cxr_worker``, ``cxr_results`` and
``cxr_web`` (``cxr_db.roles``; cluster-wide, so an existing one is kept) and grants each
what ``cxr_db.roles.GRANTS`` names; the migrating user stays the owner of every table.
``cxr-triage migrate`` applies the same map again after every upgrade (with the roles'
passwords), so tables added by later migrations are covered too. A migrating user that
may not create roles changes nothing: every process then runs as that user.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from cxr_db import roles

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    roles.apply(op.get_bind())


def downgrade() -> None:
    # the roles are the cluster's (other databases may use them): only this database's
    # grants go
    bind = op.get_bind()
    if not roles.can_manage_roles(bind):
        return
    names = [roles.role_name(kind) for kind in roles.KINDS]
    existing = bind.execute(
        sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"), {"names": names}
    ).scalars()
    database = bind.execute(sa.text("SELECT current_database()")).scalar_one()
    for name in sorted(existing):
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {name}")
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {name}")
        op.execute(f"REVOKE ALL ON SCHEMA public FROM {name}")
        op.execute(f'REVOKE ALL ON DATABASE "{database}" FROM {name}')
