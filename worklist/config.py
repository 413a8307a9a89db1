"""What the web app needs besides its engine, built once from ``WebSettings``.

``WebConfig()`` (no arguments) is a complete configuration for tests and tools: the
default sign-in policy, no broker check, the shipped model's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from cxr_common.limits import DecodeLimits
from cxr_common.model_files import shipped_model_dir
from cxr_common.passwords import Passwords
from cxr_common.settings import WebSettings
from cxr_db.accounts.store import SignInPolicy
from cxr_db.reading.store import DEFAULT_CLAIM_TIMEOUT


@dataclass(frozen=True)
class WebConfig:
    """Runtime options of the web app (see ``WebSettings`` for what each one means)."""

    policy: SignInPolicy = field(default_factory=SignInPolicy)
    passwords: Passwords = field(default_factory=Passwords)
    claim_timeout: timedelta = DEFAULT_CLAIM_TIMEOUT
    page_size: int = 50
    cookie_secure: bool | None = None  # None: Secure exactly when the request came over TLS
    broker_url: str | None = None  # None: /healthz does not check a broker
    broker_timeout_s: float = 2.0
    model_dir: Path | None = None  # None: the shipped model
    calibration_path: Path | None = None  # None: model_dir/calibration.json
    trusted_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    queue_name: str = "cxr-score"
    results_queue_name: str = "cxr-results"
    read_target_s: float = 3600.0  # time to read target of flagged studies (ops page)
    metrics_token: SecretStr | None = None  # a Prometheus scrape token, besides the ops role
    limits: DecodeLimits = field(default_factory=DecodeLimits)  # of the radiographs shown
    refresh_s: float = 30.0  # the worklist page refreshes itself this often (not activity)
    stow_max_bytes: int = 2 * 1024**3  # largest STOW-RS request body (413 above it)
    stow_max_instances: int = 1000  # most parts in one STOW-RS request (413 above it)
    sign_in_attempts_per_addr: int = 20  # failed sign-ins per client address per window
    sign_in_window_s: float = 300.0
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-* we believe
    hsts_max_age_s: int = 31536000  # Strict-Transport-Security over TLS; 0: not sent
    refused_audit_every_s: float = 60.0  # one audit row per (client, kind) this often
    token_max_age: timedelta | None = None  # refuse older API tokens; None: no cap

    @classmethod
    def from_settings(cls, settings: WebSettings) -> WebConfig:
        return cls(
            policy=SignInPolicy(
                max_failures=settings.web_max_failed_sign_ins,
                lockout=timedelta(seconds=settings.web_lockout_s),
                idle_timeout=timedelta(seconds=settings.web_idle_timeout_s),
                absolute_timeout=timedelta(seconds=settings.web_session_max_s),
            ),
            passwords=Passwords(max_concurrent=settings.web_max_concurrent_hashes),
            claim_timeout=timedelta(seconds=settings.web_claim_timeout_s),
            page_size=settings.web_page_size,
            cookie_secure=settings.web_cookie_secure,
            broker_url=settings.broker_url_value() if settings.broker_url is not None else None,
            model_dir=settings.model_dir,
            calibration_path=settings.calibration_path,
            trusted_hosts=tuple(settings.trusted_hosts()),
            queue_name=settings.queue_name,
            results_queue_name=settings.results_queue_name,
            read_target_s=settings.read_target_s,
            metrics_token=settings.metrics_token,
            limits=settings.decode_limits(),
            refresh_s=float(settings.web_refresh_s),
            stow_max_bytes=settings.web_stow_max_bytes,
            stow_max_instances=settings.web_stow_max_instances,
            sign_in_attempts_per_addr=settings.web_sign_in_attempts_per_addr,
            sign_in_window_s=float(settings.web_sign_in_window_s),
            trusted_proxies=tuple(settings.web_trusted_proxies),
            hsts_max_age_s=settings.web_hsts_max_age_s,
            refused_audit_every_s=float(settings.web_refused_audit_every_s),
            token_max_age=timedelta(days=settings.web_token_max_age_days)
            if settings.web_token_max_age_days
            else None,
        )

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or shipped_model_dir()

    @property
    def resolved_calibration_path(self) -> Path:
        return self.calibration_path or self.resolved_model_dir / "calibration.json"
