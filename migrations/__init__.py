"""Alembic migrations for the cxr-triage schema (``cxr_db.schema``).

``upgrade_to_head(url)`` is what ``cxr-triage migrate`` runs; plain ``alembic -c
migrations/alembic.ini upgrade head`` with ``CXR_DATABASE_URL`` set does the same.
"""

from __future__ import annotations

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


def upgrade_to_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (safe to run repeatedly)."""
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")
