"""Which Postgres and Redis a command talks to: the configured ones, or the embedded default,
and as which database user each process connects (issue 20, ``cxr_db.roles``).

* Embedded: ``prepare`` migrates as the embedded superuser, which creates the roles
  ``cxr_listener`` ... ``cxr_web`` with passwords generated once and kept in
  ``DATA_DIR/embedded/db-roles.json`` (mode 0600); each process connects as its role.
* Configured, with the roles' passwords (``CXR_DB_LISTENER_PASSWORD`` ...): ``up`` gives
  each child the owner's URL with its role's user and password (same host and database).
  Compose instead gives each service its own ``CXR_DATABASE_URL``.
* Configured, one ``CXR_DATABASE_URL`` and no role passwords (a developer's setup):
  every process runs as that user. With ``CXR_ENVIRONMENT=production`` a process whose
  user is a superuser logs a warning at start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text

from cxr_common.settings import CommonSettings, normalise_database_url
from cxr_db.roles import KINDS, role_url
from cxr_triage.embedded import EmbeddedServices, start_embedded

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)

ROLE_PASSWORDS_FILE = "db-roles.json"
#: The settings that hold the roles' passwords (``CXR_DB_LISTENER_PASSWORD`` ...).
ROLE_PASSWORD_SETTINGS = tuple(f"db_{kind}_password" for kind in KINDS)


def without_role_passwords(env: dict[str, str]) -> dict[str, str]:
    """``env`` less every role's password variable: a child process must not be able to
    connect as another process's role."""
    drop = {f"CXR_{name.upper()}" for name in ROLE_PASSWORD_SETTINGS}
    return {k: v for k, v in env.items() if k not in drop}


def embedded_role_passwords(folder: Path) -> dict[str, str]:
    """The embedded roles' passwords, generated on first use and kept in ``folder``
    (mode 0600)."""
    path = folder / ROLE_PASSWORDS_FILE
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and set(stored) >= set(KINDS):
            return {kind: str(stored[kind]) for kind in KINDS}
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    passwords = {kind: secrets.token_urlsafe(24) for kind in KINDS}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(passwords, handle)
    tmp.replace(path)
    return passwords


@dataclass
class ResolvedServices:
    database_url: str
    broker_url: str
    embedded: EmbeddedServices | None
    #: kind -> password of its role; empty: every process connects as ``database_url``
    role_passwords: dict[str, str] = field(default_factory=dict)
    roles: bool = False

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def prepare(self, *, migrate: bool) -> None:
        """Migrate (when asked) and create the roles with their passwords; afterwards
        :meth:`database_url_for` names each process's role."""
        from migrations import upgrade_to_head

        if migrate:
            self.roles = upgrade_to_head(self.database_url, self.role_passwords)
        else:
            self.roles = bool(self.role_passwords)

    def database_url_for(self, kind: str | None) -> str:
        """The URL a process of ``kind`` connects with (``None``: the owner's, for
        ``migrate`` and the admin commands)."""
        if kind is None or not self.roles or kind not in self.role_passwords:
            return self.database_url
        return role_url(self.database_url, kind, self.role_passwords[kind])

    def apply(self, settings: S, kind: str | None = None) -> S:
        """``settings`` pointing at these services (as ``kind``'s role)."""
        return settings.with_overrides(
            database_url=self.database_url_for(kind), broker_url=self.broker_url
        )

    def child_env(self, base: dict[str, str], kind: str | None = None) -> dict[str, str]:
        """``base`` plus these services' URLs, for a child process of ``kind``; without
        the roles' passwords (a child knows its own, in its URL, and no other's)."""
        env = without_role_passwords(base)
        env["CXR_DATABASE_URL"] = self.database_url_for(kind)
        env["CXR_BROKER_URL"] = self.broker_url
        return env


def resolve_services(settings: CommonSettings, data_dir: Path | None = None) -> ResolvedServices:
    """Configured URLs when both are set; otherwise the embedded Postgres + Redis."""
    if settings.database_url is not None and settings.broker_url is not None:
        return ResolvedServices(
            settings.database_url_value(),
            settings.broker_url_value(),
            None,
            settings.role_passwords(),
        )
    folder = (data_dir or settings.data_dir) / "embedded"
    log.info("CXR_DATABASE_URL/CXR_BROKER_URL unset: using the embedded Postgres and Redis")
    embedded = start_embedded(folder)
    if settings.database_url is not None:
        db = settings.database_url_value()
        passwords = settings.role_passwords()
    else:
        db = normalise_database_url(embedded.database_url)
        passwords = embedded_role_passwords(folder)
    broker = settings.broker_url_value() if settings.broker_url is not None else embedded.broker_url
    return ResolvedServices(db, broker, embedded, passwords)


def warn_if_superuser(settings: CommonSettings) -> None:
    """Production (``CXR_ENVIRONMENT=production``) with a superuser database URL: say so
    once at start; the process still runs (a developer's single URL is allowed)."""
    if settings.environment != "production" or settings.database_url is None:
        return
    from cxr_db import make_engine

    engine = make_engine(settings.database_url_value(), pool_size=1)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            ).one_or_none()
    except Exception as exc:  # noqa: BLE001 - the process itself reports an unreachable database
        log.debug("superuser check skipped: %s", type(exc).__name__)
        return
    finally:
        engine.dispose()
    if row is not None and row[1]:
        log.warning(
            "connected to Postgres as superuser %s in production: every process can read "
            "and change everything, the audit log included; give each process its own role "
            "(cxr-triage migrate creates them; README 'Database roles')",
            row[0],
        )
