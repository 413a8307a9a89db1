"""Alembic migrations for the cxr-triage schema (``cxr_db.schema``).

``upgrade_to_head(url)`` is what ``cxr-triage migrate`` runs: the migrations, then the
per-process roles and their grants (``cxr_db.roles``) applied again, so a table added by
a later migration is granted as the map says. Plain ``alembic -c migrations/alembic.ini
upgrade head`` with ``CXR_DATABASE_URL`` set migrates the same but sets no passwords and
re-applies the grants only when it runs 0018.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_to_head(url: str, role_passwords: Mapping[str, str] | None = None) -> bool:
    """Bring the database at ``url`` to the newest schema and the roles' grants in line
    with ``cxr_db.roles.GRANTS`` (safe to run repeatedly). ``role_passwords``: process
    kind -> password of its role. Returns whether the roles were managed (False: the user
    of ``url`` may not create roles, and every process runs as that user)."""
    from sqlalchemy import create_engine, pool

    from cxr_common.settings import normalise_database_url
    from cxr_db import roles

    command.upgrade(alembic_config(url), "head")
    engine = create_engine(normalise_database_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            return roles.apply(conn, role_passwords)
    finally:
        engine.dispose()


def downgrade_to_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")
