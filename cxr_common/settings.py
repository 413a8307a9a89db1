"""Typed settings, one class per process, read from ``CXR_*`` environment variables.

Build them with the ``*_settings()`` functions and pass them in; nothing reads the
environment at import time. When ``CXR_DATABASE_URL`` or ``CXR_BROKER_URL`` is unset the
CLI starts the embedded Postgres/Redis in ``CXR_DATA_DIR`` (see ``cxr_triage.embedded``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Where cxr-triage keeps its embedded services and stored instances by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxr-triage"


class CommonSettings(BaseSettings):
    """Settings every process shares."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy/psycopg URL of Postgres; unset = embedded"
    )
    broker_url: SecretStr | None = Field(
        default=None, description="Redis URL of the Celery broker; unset = embedded"
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    storage_uri: str | None = Field(
        default=None, description="Where instances live, e.g. file:///data/instances"
    )
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"
    queue_name: str = "cxr-score"

    @property
    def resolved_storage_uri(self) -> str:
        if self.storage_uri:
            return self.storage_uri
        return (self.data_dir.resolve() / "instances").as_uri()

    def database_url_value(self) -> str:
        from cxr_common.errors import ConfigurationError

        if self.database_url is None:
            raise ConfigurationError(
                "CXR_DATABASE_URL is not set: set it, or start the embedded services with "
                "`cxr-triage up`"
            )
        return normalise_database_url(self.database_url.get_secret_value())

    def broker_url_value(self) -> str:
        from cxr_common.errors import ConfigurationError

        if self.broker_url is None:
            raise ConfigurationError(
                "CXR_BROKER_URL is not set: set it, or start the embedded services with "
                "`cxr-triage up`"
            )
        return self.broker_url.get_secret_value()


class ListenerSettings(CommonSettings):
    """The DICOM C-STORE listener."""

    ae_title: str = Field(default="CXR_TRIAGE", max_length=16)
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_ae_titles: str = Field(
        default="", description="Comma-separated calling AE titles; empty = accept any"
    )
    max_associations: int = Field(default=10, ge=1)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    reconcile_grace_s: float = Field(default=15.0, ge=0)
    stale_processing_s: float = Field(
        default=1800.0, gt=0, description="re-enqueue instances 'processing' for this long"
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title_ok(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value:
            raise ValueError("AE title must be 1-16 characters without backslash")
        return value

    @property
    def allowed_ae_titles(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.allowed_calling_ae_titles.split(",") if t.strip())


class WorkerSettings(CommonSettings):
    """A scoring worker process."""

    batch_max_size: int | None = Field(
        default=None, ge=1, le=256, description="unset = 4 on CPU, 16 on CUDA (BENCHMARKS.md)"
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=512, description="jobs in flight; unset = 2 x batch size"
    )
    batch_max_wait_ms: int = Field(default=250, ge=0)
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1; unset = auto")
    model_dir: Path | None = Field(default=None, description="unset = the shipped model")
    calibration_path: Path | None = Field(default=None, description="unset = shipped calibration")
    heatmaps: bool = True
    max_retries: int = Field(default=5, ge=0)
    task_time_limit_s: int = Field(default=600, ge=10)
    heartbeat_file: Path | None = Field(
        default=None, description="touched every 10 s while the worker runs (healthchecks)"
    )


def resolve_batching(settings: WorkerSettings, device_type: str) -> tuple[int, int]:
    """(max batch size, concurrency) for a worker on ``device_type`` ('cpu' or 'cuda').

    On CPU a batch of more than ~4 is slower per image (BENCHMARKS.md); on a GPU bigger
    batches pay. Twice the batch size in flight lets the next batch decode while one runs."""
    batch = settings.batch_max_size or (16 if device_type == "cuda" else 4)
    return batch, settings.concurrency or 2 * batch


class WebSettings(CommonSettings):
    """The worklist web app."""

    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)


def normalise_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def listener_settings() -> ListenerSettings:
    return ListenerSettings()


def worker_settings() -> WorkerSettings:
    return WorkerSettings()


def web_settings() -> WebSettings:
    return WebSettings()


def common_settings() -> CommonSettings:
    return CommonSettings()
