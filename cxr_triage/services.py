"""Which Postgres and Redis a command talks to: the configured ones, or the embedded default."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cxr_common.settings import CommonSettings, normalise_database_url
from cxr_triage.embedded import EmbeddedServices, start_embedded

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)


@dataclass
class ResolvedServices:
    database_url: str
    broker_url: str
    embedded: EmbeddedServices | None

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def apply(self, settings: S) -> S:
        """``settings`` pointing at these services."""
        return settings.with_overrides(database_url=self.database_url, broker_url=self.broker_url)

    def child_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus these services' URLs, for a child process's settings to read."""
        env = dict(base)
        env["CXR_DATABASE_URL"] = self.database_url
        env["CXR_BROKER_URL"] = self.broker_url
        return env


def resolve_services(settings: CommonSettings, data_dir: Path | None = None) -> ResolvedServices:
    """Configured URLs when both are set; otherwise the embedded Postgres + Redis."""
    if settings.database_url is not None and settings.broker_url is not None:
        return ResolvedServices(settings.database_url_value(), settings.broker_url_value(), None)
    folder = (data_dir or settings.data_dir) / "embedded"
    log.info("CXR_DATABASE_URL/CXR_BROKER_URL unset: using the embedded Postgres and Redis")
    embedded = start_embedded(folder)
    db = (
        settings.database_url_value()
        if settings.database_url is not None
        else normalise_database_url(embedded.database_url)
    )
    broker = settings.broker_url_value() if settings.broker_url is not None else embedded.broker_url
    return ResolvedServices(db, broker, embedded)
