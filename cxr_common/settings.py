"""Typed settings, one class per process, read from ``CXR_*`` environment variables.

Build them once per process (``cxr_triage.cli.main`` or the ``*_settings()`` functions)
and pass them in; derive variants with ``with_overrides`` (a validated
``model_copy(update=...)``), never by writing ``os.environ``. Nothing reads the
environment at import time. When ``CXR_DATABASE_URL`` or ``CXR_BROKER_URL`` is unset the
CLI starts the embedded Postgres/Redis in ``CXR_DATA_DIR`` (see ``cxr_triage.embedded``).

The service URLs are ``SecretStr`` (they may hold passwords, so they never appear in a
repr, a log line or a validation error) checked against pydantic's ``PostgresDsn`` and
``RedisDsn``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    IPvAnyNetwork,
    PostgresDsn,
    RedisDsn,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cxr_common.errors import ConfigurationError
from cxr_common.limits import DecodeLimitSettings
from cxr_common.population import PopulationPolicy, UnknownAge

#: Seconds after which Redis redelivers a job no worker acknowledged (a worker died
#: mid-job). ``cxr_queue.make_celery`` sets it on the broker; every task must finish well
#: within it (``WorkerSettings.task_time_limit_s``) or a running job is handed to a
#: second worker. It is the second line: the worker's lease on the row (renewed while it
#: works, ``lease_ttl_s``) and the scheduler's reconciler bring a dead worker's jobs back
#: within a minute.
BROKER_VISIBILITY_TIMEOUT_S = 600

_POSTGRES_URL: TypeAdapter[PostgresDsn] = TypeAdapter(PostgresDsn)
_REDIS_URL: TypeAdapter[RedisDsn] = TypeAdapter(RedisDsn)


def _url_problem(adapter: TypeAdapter[Any], url: str) -> str | None:
    """What is wrong with ``url`` for ``adapter``, without echoing the URL (it may hold a
    password); None when it is fine."""
    try:
        adapter.validate_python(url)
    except ValidationError as exc:
        return "; ".join(str(error["msg"]) for error in exc.errors(include_input=False))
    return None


def _checked_database_url(value: SecretStr) -> SecretStr:
    url = normalise_database_url(value.get_secret_value())
    parts = urlsplit(url)
    checked = url
    if not parts.hostname and "host" in parse_qs(parts.query):
        # A Unix socket (``postgresql://user@/db?host=/run/postgresql``, what the embedded
        # Postgres hands out): URLs have no empty host, so check the rest with a stand-in.
        userinfo, at, port = parts.netloc.rpartition("@")
        checked = urlunsplit(parts._replace(netloc=f"{userinfo}{at}localhost{port}"))
    problem = _url_problem(_POSTGRES_URL, checked)
    if problem:
        raise ValueError(
            f"not a Postgres URL ({problem}); expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
            " or postgresql://USER@/DB?host=/SOCKET/DIR"
        )
    return SecretStr(url)


def _checked_broker_url(value: SecretStr) -> SecretStr:
    problem = _url_problem(_REDIS_URL, value.get_secret_value())
    if problem:
        raise ValueError(
            f"not a Redis URL ({problem}); expected redis://[:PASSWORD@]HOST[:PORT]/DB"
        )
    return value


#: A Postgres URL, normalised to the psycopg 3 driver (``postgresql+psycopg://``).
DatabaseUrl = Annotated[SecretStr, AfterValidator(_checked_database_url)]
#: A Redis URL (``redis://`` or ``rediss://``) for the Celery broker.
BrokerUrl = Annotated[SecretStr, AfterValidator(_checked_broker_url)]


def _split_ae_titles(value: object) -> object:
    """``CXR_ALLOWED_CALLING_AE_TITLES`` is comma-separated: 'MODALITY1, PACS' -> two."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


def default_data_dir() -> Path:
    """Where cxr-triage keeps its embedded services and stored instances by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxr-triage"


def webhook_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list, stripped, empty items left out."""
    return [u.strip() for u in value.split(",") if u.strip()]


class CommonSettings(BaseSettings):
    """Settings every process shares."""

    # hide_input_in_errors: a ValidationError must not print a URL with its password
    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", hide_input_in_errors=True)

    database_url: DatabaseUrl | None = Field(
        default=None, description="SQLAlchemy/psycopg URL of Postgres; unset = embedded"
    )
    broker_url: BrokerUrl | None = Field(
        default=None, description="Redis URL of the Celery broker; unset = embedded"
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    storage_uri: str | None = Field(
        default=None, description="Where instances live, e.g. file:///data/instances"
    )
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"
    queue_name: str = "cxr-score"
    results_queue_name: str = Field(
        default="cxr-results", description="Celery queue of the results-to-PACS jobs"
    )
    read_target_s: float = Field(
        default=3600.0,
        gt=0,
        description="Target time to read a flagged study, seconds (ops page, 'stats': the "
        "share of flagged studies read within it)",
    )
    uid_root: str | None = Field(
        default=None,
        description="UID root of the objects we create (SC, SR); unset = a 2.25 UUID root "
        "generated once and kept in CXR_DATA_DIR/uid-root",
    )
    web_base_url: str = Field(
        default="",
        description="the worklist's address as readers reach it, e.g. https://cxr.example; "
        "escalations and HL7 results link to <this>/studies/<uid> (empty: escalations "
        "carry a relative link, HL7 results none)",
    )

    patient_key: SecretStr | None = Field(
        default=None,
        description="Key of the patient identity hashes (cxr_ingest.identity); unset = a "
        "random key generated once and kept in CXR_DATA_DIR/patient-key. Every process that "
        "ingests (listeners, STOW-RS) must use the same key",
    )

    @property
    def patient_key_file(self) -> Path:
        """Where the generated patient key is kept when ``CXR_PATIENT_KEY`` is unset."""
        return self.data_dir / "patient-key"

    def patient_key_value(self) -> str | None:
        return None if self.patient_key is None else self.patient_key.get_secret_value()

    environment: Literal["development", "production"] = Field(
        default="development",
        description="production: the listener refuses to start with no allow-list (calling "
        "AE titles or peer networks) unless CXR_ACCEPT_ANY_PEER=true; a process connected "
        "to Postgres as a superuser logs a warning",
    )
    # --- database roles (issue 20, cxr_db.roles) ------------------------------------------
    # `migrate` sets these passwords on the roles cxr_listener ... cxr_web; `up` gives each
    # child CXR_DATABASE_URL with its role's user and password. Unset: every process runs
    # as the user of CXR_DATABASE_URL (compose gives each service its own URL instead).
    db_listener_password: SecretStr | None = Field(default=None, description="role cxr_listener")
    db_scheduler_password: SecretStr | None = Field(default=None, description="role cxr_scheduler")
    db_worker_password: SecretStr | None = Field(default=None, description="role cxr_worker")
    db_results_password: SecretStr | None = Field(default=None, description="role cxr_results")
    db_web_password: SecretStr | None = Field(default=None, description="role cxr_web")

    def role_passwords(self) -> dict[str, str]:
        """Process kind -> its database role's password, for those set (empty values are
        unset)."""
        out: dict[str, str] = {}
        for kind in ("listener", "scheduler", "worker", "results", "web"):
            value = getattr(self, f"db_{kind}_password")
            if value is not None and value.get_secret_value().strip():
                out[kind] = value.get_secret_value()
        return out

    @property
    def uid_root_file(self) -> Path:
        """Where the generated UID root is kept when ``CXR_UID_ROOT`` is unset."""
        return self.data_dir / "uid-root"

    @property
    def resolved_storage_uri(self) -> str:
        if self.storage_uri:
            return self.storage_uri
        return (self.data_dir.resolve() / "instances").as_uri()

    def database_url_value(self) -> str:
        if self.database_url is None:
            raise ConfigurationError(
                "CXR_DATABASE_URL is not set: set it, or start the embedded services with "
                "`cxr-triage up`"
            )
        return self.database_url.get_secret_value()

    def broker_url_value(self) -> str:
        if self.broker_url is None:
            raise ConfigurationError(
                "CXR_BROKER_URL is not set: set it, or start the embedded services with "
                "`cxr-triage up`"
            )
        return self.broker_url.get_secret_value()

    def with_overrides(self, **changes: Any) -> Self:
        """A copy with ``changes``: ``model_copy(update=...)`` whose values are first
        validated as the environment's would be (``--batch-size 0`` is refused)."""
        unknown = sorted(changes.keys() - type(self).model_fields.keys())
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(unknown)}")
        try:
            # checks the merged values without reading the environment again
            checked = type(self).model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise ConfigurationError(describe_settings_error(exc)) from exc
        return self.model_copy(update={name: getattr(checked, name) for name in changes})


#: Most listener processes the default starts (each holds about 140 MB).
MAX_DEFAULT_LISTENER_PROCESSES = 8


def default_listener_processes() -> int:
    """One listener process per CPU core this process may run on, at most
    :data:`MAX_DEFAULT_LISTENER_PROCESSES`; 1 where sockets have no SO_REUSEPORT."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_DEFAULT_LISTENER_PROCESSES, cores or 1))


class ListenerSettings(CommonSettings, DecodeLimitSettings):
    """The DICOM C-STORE listener (decode limits checked before it answers)."""

    ae_title: str = Field(default="CXR_TRIAGE", max_length=16)
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_ae_titles: Annotated[list[str], NoDecode, BeforeValidator(_split_ae_titles)] = (
        Field(
            default_factory=list,
            description="calling AE titles allowed to associate (comma-separated in the "
            "environment); empty = accept any",
        )
    )
    urgent_calling_ae_titles: Annotated[list[str], NoDecode, BeforeValidator(_split_ae_titles)] = (
        Field(
            default_factory=list,
            description="calling AE titles whose instances are scored first (the urgent "
            "lane: emergency department, ICU; comma-separated in the environment)",
        )
    )
    max_associations: int = Field(
        default=10,
        ge=1,
        description="open associations at once, per listener process (see listener_processes)",
    )
    listener_processes: int | None = Field(
        default=None,
        ge=1,
        description="listener processes sharing CXR_DICOM_PORT (SO_REUSEPORT, Linux): the "
        "kernel spreads connections over them; the association, per-peer and connection "
        "limits apply to each process; child i serves metrics on CXR_METRICS_PORT + i. Needs a "
        "fixed port (not 0). Unset: one per CPU core, at most 8 (1 with port 0 or "
        "without SO_REUSEPORT): resolved_listener_processes",
    )
    listener_process_index: int | None = Field(
        default=None,
        ge=0,
        description="internal: set by the parent of CXR_LISTENER_PROCESSES > 1 for each child "
        "(binds with SO_REUSEPORT)",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title_ok(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value:
            raise ValueError("AE title must be 1-16 characters without backslash")
        return value

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _allowed_ae_titles_ok(cls, titles: list[str]) -> list[str]:
        titles = sorted({t.strip() for t in titles if t.strip()})
        for title in titles:
            if len(title) > 16 or "\\" in title:
                raise ValueError(
                    f"calling AE title {title!r} is not 1-16 characters without backslash"
                )
        return titles

    # --- DICOM trust boundary (issue 12) ---------------------------------------------
    # environment (CommonSettings): production refuses to start with no allow-list
    # (calling AE titles or peer networks) unless CXR_ACCEPT_ANY_PEER=true
    accept_any_peer: bool = Field(
        default=False, description="production only: explicitly accept any peer"
    )
    accept_any_called_ae_title: bool = Field(
        default=False,
        description="accept associations whatever called AE title they name (routers that "
        "rewrite it); default: refuse any but CXR_AE_TITLE",
    )
    allowed_peer_networks: Annotated[
        list[IPvAnyNetwork], NoDecode, BeforeValidator(_split_ae_titles)
    ] = Field(
        default_factory=list,
        description="source IP networks (CIDR, comma-separated) allowed to connect; empty = any",
    )
    max_associations_per_peer: int = Field(
        default=4, ge=1, description="open connections one source IP may hold at once"
    )
    max_connections: int = Field(
        default=64, ge=1, description="open connections (all peers) at once; more are closed"
    )
    acse_timeout_s: float = Field(
        default=10.0, gt=0, description="wait for A-ASSOCIATE-RQ / A-RELEASE (ARTIM timer)"
    )
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="wait for a DIMSE message")
    network_timeout_s: float = Field(
        default=60.0, gt=0, description="close an association idle this long"
    )
    pdu_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="each PDU must arrive whole within this many seconds of its first byte, "
        "and a longer message at CXR_MIN_TRANSFER_RATE on average after it; a slower peer "
        "is closed and logged (0 = no deadline: only CXR_NETWORK_TIMEOUT_S per read)",
    )
    min_transfer_rate: float = Field(
        default=8192.0,
        gt=0,
        description="bytes/s a message (a C-STORE data set) must keep on average once it has "
        "taken longer than CXR_PDU_TIMEOUT_S",
    )
    dicom_max_pdu_bytes: int = Field(
        default=1_048_576,
        ge=0,
        description="Maximum Length we offer for P-DATA PDUs (0 = unlimited; pynetdicom's "
        "default is 16382). Large PDUs cut the per-PDU work several-fold; a PDU longer than "
        "twice this plus 64 kB closes the connection",
    )
    dicom_tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain): DICOM TLS when set"
    )
    dicom_tls_key: Path | None = Field(default=None, description="PEM private key of the cert")
    dicom_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set, every peer must present a client certificate "
        "it signed",
    )
    dicom_tls_client_ae_titles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="JSON {certificate subject CN or 'sha256:<hex fingerprint>': [calling AE "
        "titles]}: a client certificate may call only as its AE titles (needs "
        "CXR_DICOM_TLS_CA); others get A-ASSOCIATE-RJ. Empty: any signed certificate, any "
        "allowed AE title",
    )

    @property
    def resolved_listener_processes(self) -> int:
        """``listener_processes``, or when unset one per CPU core (at most 8): 4
        processes ingested 1.4x faster than 1 for 4 senders on 2 cores, 2 beat 1 under
        load (BENCHMARKS.md). 1 with port 0 (each would get its own port), for a child of
        several, and where the kernel has no SO_REUSEPORT."""
        if self.listener_processes is not None:
            return self.listener_processes
        if self.dicom_port == 0 or self.listener_process_index is not None:
            return 1
        return default_listener_processes()

    @model_validator(mode="after")
    def _trust_boundary_ok(self) -> Self:
        if (
            self.environment == "production"
            and not self.accept_any_peer
            and not self.allowed_calling_ae_titles
            and not self.allowed_peer_networks
        ):
            raise ValueError(
                "production mode (CXR_ENVIRONMENT=production) needs an allow-list: set "
                "CXR_ALLOWED_CALLING_AE_TITLES and/or CXR_ALLOWED_PEER_NETWORKS, or "
                "CXR_ACCEPT_ANY_PEER=true to accept any peer on purpose"
            )
        if (self.listener_processes or 1) > 1 and self.dicom_port == 0:
            raise ValueError(
                f"CXR_LISTENER_PROCESSES={self.listener_processes} needs a fixed "
                "CXR_DICOM_PORT: with port 0 every process would listen on a different "
                "free port"
            )
        if (self.listener_processes or 1) > 1 and self.listener_process_index is not None:
            raise ValueError(
                "CXR_LISTENER_PROCESS_INDEX is set by the parent of CXR_LISTENER_PROCESSES "
                "children; a child runs one process"
            )
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("set both CXR_DICOM_TLS_CERT and CXR_DICOM_TLS_KEY, or neither")
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("CXR_DICOM_TLS_CA (client certificates) needs DICOM TLS")
        if self.dicom_tls_client_ae_titles and self.dicom_tls_ca is None:
            raise ValueError(
                "CXR_DICOM_TLS_CLIENT_AE_TITLES needs client certificates (CXR_DICOM_TLS_CA)"
            )
        for name, titles in self.dicom_tls_client_ae_titles.items():
            if not name.strip() or not titles or any(not 0 < len(t.strip()) <= 16 for t in titles):
                raise ValueError(
                    f"CXR_DICOM_TLS_CLIENT_AE_TITLES: {name!r} needs 1 or more AE titles of "
                    "1-16 characters"
                )
        for path in (self.dicom_tls_cert, self.dicom_tls_key, self.dicom_tls_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"DICOM TLS file {path} is not a readable file")
        return self

    @field_validator("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca", mode="before")
    @classmethod
    def _empty_tls_is_unset(cls, value: object) -> object:
        """``CXR_DICOM_TLS_CERT=`` (compose's default) means no TLS."""
        return None if isinstance(value, str) and not value.strip() else value

    # Metrics (cxr_common.metrics): this process's own /metrics on a port of its own.
    metrics_host: str = Field(default="127.0.0.1", description="where CXR_METRICS_PORT listens")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve /metrics here; unset = off"
    )


class SchedulerSettings(CommonSettings):
    """The ``scheduler`` role (``cxr-triage schedule``): the reconciler and the study
    completeness monitor."""

    reconcile_interval_s: float = Field(default=10.0, gt=0)
    reconcile_grace_s: float = Field(default=15.0, ge=0)
    stale_processing_s: float = Field(
        default=1800.0, gt=0, description="re-enqueue instances 'processing' for this long"
    )
    study_quiet_s: float = Field(
        default=30.0,
        ge=0,
        description="a study is complete when no instance arrived for this long and none "
        "is pending; then its results are sent",
    )
    completeness_interval_s: float = Field(
        default=5.0, gt=0, description="how often the scheduler looks for complete studies"
    )
    scheduler_heartbeat_file: Path | None = Field(
        default=None,
        description="touched every 10 s while both periodic jobs pass (healthchecks)",
    )

    # escalation of flagged studies left unread (cxr_scheduler.escalation, issue 19)
    escalate_after_s: float = Field(
        default=900.0, gt=0, description="escalate a flagged study unread this long"
    )
    escalate_repeat_s: float = Field(
        default=900.0, gt=0, description="escalate it again this often until it is opened"
    )
    escalation_webhooks: str = Field(
        default="",
        description="http(s) URLs, comma-separated, that get each escalation as a JSON "
        "POST; empty = escalations are recorded and shown, nothing is posted",
    )
    escalation_interval_s: float = Field(
        default=10.0, gt=0, description="how often the scheduler looks for studies to escalate"
    )

    @field_validator("escalation_webhooks")
    @classmethod
    def _webhooks_ok(cls, value: str) -> str:
        for url in webhook_urls(value):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("each escalation webhook is an http:// or https:// URL")
        return value

    @property
    def escalation_webhook_urls(self) -> list[str]:
        return webhook_urls(self.escalation_webhooks)


class WorkerSettings(CommonSettings, DecodeLimitSettings):
    """A scoring worker process (decode limits checked before any decode)."""

    batch_max_size: int | None = Field(
        default=None, ge=1, le=256, description="unset = 4 on CPU, 16 on CUDA (BENCHMARKS.md)"
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=512, description="jobs in flight; unset = 2 x batch size"
    )
    batch_max_wait_ms: int = Field(default=250, ge=0)
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1; unset = auto")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="torch CPU threads for the model; unset = torch's default (one per core). "
        "With several workers on one machine use cores / workers (BENCHMARKS.md, Threads)",
    )
    model_dir: Path | None = Field(
        default=None,
        description="unset = the shipped model; registered and activated only when the model "
        "registry has no active model (cxr-triage model ...)",
    )
    calibration_path: Path | None = Field(
        default=None, description="unset = MODEL_DIR/calibration.json (with CXR_MODEL_DIR)"
    )
    heatmaps: bool = True
    max_retries: int = Field(
        default=8, ge=0, description="transient retries (1, 2, 4 ... 60 s apart: about 3 min)"
    )
    task_time_limit_s: int = Field(
        default=300,
        ge=10,
        description=f"hard limit per job; below the broker's visibility timeout "
        f"({BROKER_VISIBILITY_TIMEOUT_S} s)",
    )
    heartbeat_file: Path | None = Field(
        default=None,
        description="touched every 10 s while the worker makes progress or is idle with "
        "nothing to do (healthchecks); left alone while it is stuck",
    )
    # Leases, attempts and bounded waits (issue 12; worker/leases.py, worker/pipeline.py)
    lease_ttl_s: float = Field(
        default=20.0, ge=2, description="a claimed instance's lease; renewed while scoring"
    )
    lease_renew_s: float = Field(default=5.0, gt=0, description="how often leases are renewed")
    max_attempts: int = Field(
        default=3, ge=1, description="claims that may end without a result before 'failed'"
    )
    batch_timeout_s: float = Field(
        default=120.0, gt=0, description="longest wait for a batch's scores before 'failed'"
    )
    restart_on_exit: bool = Field(
        default=True, description="`cxr-triage work` restarts its worker process if it dies"
    )

    @field_validator("lease_renew_s")
    @classmethod
    def _renew_well_within_ttl(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("lease_ttl_s")
        if ttl is not None and value * 2 > ttl:
            raise ValueError(
                f"leases renewed every {value:g} s would lapse: renew at most every half of "
                f"CXR_LEASE_TTL_S ({ttl:g} s)"
            )
        return value

    population_policy: PopulationPolicy = Field(
        default=PopulationPolicy.ENFORCE,
        description="enforce: scores of instances outside the model's validated population "
        "are shown in shadow and never triage; off: every eligible score triages",
    )
    unknown_age: UnknownAge = Field(
        default=UnknownAge.IN_SCOPE,
        description="under enforce, an instance whose age the header does not give is "
        "treated as in_scope (its score triages) or outside (shadow)",
    )

    @field_validator("task_time_limit_s")
    @classmethod
    def _below_visibility_timeout(cls, value: int) -> int:
        if value >= BROKER_VISIBILITY_TIMEOUT_S:
            raise ValueError(
                f"a task time limit of {value} s is not below the broker's visibility timeout "
                f"({BROKER_VISIBILITY_TIMEOUT_S} s): a job still running then would be handed "
                "to a second worker"
            )
        return value

    # Metrics (cxr_common.metrics): this process's own /metrics on a port of its own.
    metrics_host: str = Field(default="127.0.0.1", description="where CXR_METRICS_PORT listens")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve /metrics here; unset = off"
    )


def resolve_batching(settings: WorkerSettings, device_type: str) -> tuple[int, int]:
    """(max batch size, concurrency) for a worker on ``device_type`` ('cpu' or 'cuda').

    On CPU a batch of more than ~4 is slower per image (BENCHMARKS.md); on a GPU bigger
    batches pay. Twice the batch size in flight lets the next batch decode while one runs."""
    batch = settings.batch_max_size or (16 if device_type == "cuda" else 4)
    return batch, settings.concurrency or 2 * batch


def _split_hosts(value: object) -> object:
    """``CXR_WEB_TRUSTED_HOSTS`` is comma-separated: 'worklist.example.org, localhost'."""
    if isinstance(value, str):
        return [h.strip() for h in value.split(",") if h.strip()]
    return value


#: Host names the web app always answers to (``web_trusted_hosts`` adds to them).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class WebSettings(CommonSettings, DecodeLimitSettings):
    """The worklist web app: where it listens, TLS, trusted host names, sign-in policy,
    read claims, the decode limits of the radiographs it shows. ``broker_url`` (from
    ``CommonSettings``) is what ``/healthz`` pings; ``model_dir`` and ``calibration_path``
    name the files ``/readyz`` verifies (the same settings, and defaults, as the
    workers')."""

    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)
    web_tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS directly"
    )
    web_tls_key: Path | None = Field(default=None, description="PEM private key of the cert")
    web_trusted_hosts: Annotated[list[str], NoDecode, BeforeValidator(_split_hosts)] = Field(
        default_factory=list,
        description="Host header values accepted besides localhost, 127.0.0.1, ::1 and the "
        "bind host (comma-separated; '*' accepts any: only behind a proxy that checks it)",
    )
    web_cookie_secure: bool | None = Field(
        default=None,
        description="mark the session cookie Secure; unset = when the request came over "
        "TLS (set true behind a TLS-terminating reverse proxy)",
    )
    web_idle_timeout_s: int = Field(default=1800, ge=60, description="sign out after idling")
    web_session_max_s: int = Field(default=43200, ge=300, description="sign out after this")
    web_max_failed_sign_ins: int = Field(default=5, ge=1, description="then lock the account")
    web_lockout_s: int = Field(
        default=900, ge=1, description="how long a lock-out lasts (per account and client)"
    )
    web_sign_in_attempts_per_addr: int = Field(
        default=20,
        ge=1,
        description="failed sign-ins one client address may make (all accounts together) "
        "per web_sign_in_window_s; then 429 with Retry-After",
    )
    web_sign_in_window_s: int = Field(default=300, ge=1, description="see the line above")
    web_max_concurrent_hashes: int = Field(
        default=4, ge=1, le=64, description="argon2 password checks at once (64 MiB each)"
    )
    web_trusted_proxies: Annotated[list[str], NoDecode, BeforeValidator(_split_hosts)] = Field(
        default_factory=list,
        description="addresses or CIDRs of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (comma-separated); unset = none",
    )
    web_token_max_age_days: int = Field(
        default=0,
        ge=0,
        le=3650,
        description="refuse API tokens older than this, whatever their own expiry; 0 = no cap",
    )
    web_hsts_max_age_s: int = Field(
        default=31536000, ge=0, description="Strict-Transport-Security over TLS; 0 = not sent"
    )
    web_refused_audit_every_s: int = Field(
        default=60,
        ge=1,
        description="at most one audit row per client address and kind of refusal this often",
    )
    web_claim_timeout_s: int = Field(
        default=900, ge=30, description="an opened study is 'in progress' for this long"
    )
    web_page_size: int = Field(default=50, ge=5, le=500, description="studies per page")
    web_refresh_s: int = Field(
        default=30, ge=5, le=3600, description="the worklist refreshes itself this often"
    )
    model_dir: Path | None = Field(default=None, description="unset = the shipped model")
    calibration_path: Path | None = Field(default=None, description="unset = shipped calibration")
    # STOW-RS in (POST /dicomweb/studies, a token of the sender role)
    web_stow_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="largest STOW-RS request body, bytes (413 above it: Content-Length is "
        "checked before reading, the stream while reading)",
    )
    web_stow_max_instances: int = Field(
        default=1000, ge=1, le=100_000, description="most instances in one STOW-RS request"
    )

    @field_validator("web_tls_cert", "web_tls_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``CXR_WEB_TLS_CERT=`` (compose's default) means no TLS."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.web_tls_cert is None) != (self.web_tls_key is None):
            raise ValueError("set both CXR_WEB_TLS_CERT and CXR_WEB_TLS_KEY, or neither")
        for path in (self.web_tls_cert, self.web_tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} is not a readable file")
        return self

    @field_validator("web_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"CXR_WEB_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR"
                ) from exc
        return value

    @property
    def tls(self) -> bool:
        return self.web_tls_cert is not None

    def trusted_hosts(self) -> list[str]:
        """Loopback names, the bind host (unless it is a wildcard) and ``web_trusted_hosts``."""
        hosts = list(LOOPBACK_HOSTS)
        if self.web_host not in ("0.0.0.0", "::", ""):
            hosts.append(self.web_host)
        hosts.extend(self.web_trusted_hosts)
        return list(dict.fromkeys(hosts))

    metrics_token: SecretStr | None = Field(
        default=None,
        description="bearer token a Prometheus scraper sends to /metrics (at least 16 "
        "characters); unset = none (the ops role's sign-in or API token still works)",
    )

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _metrics_token_ok(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and not raw.strip():
            return None  # CXR_METRICS_TOKEN= (compose's default) means none
        if isinstance(raw, str) and len(raw.strip()) < 16:
            raise ValueError("the metrics token must be at least 16 characters")
        return value


class ResultSettings(CommonSettings):
    """The results sender (``cxr-triage send-results``): C-STORE of the Secondary Capture
    and the SR of each complete study to PACS."""

    result_destinations: str = Field(
        default="",
        description="AE_TITLE@host:port or DICOMweb base URL (http(s)://host[:port]/path, "
        "STOW-RS)[,...]; empty = nothing is sent (checked at start by "
        "cxr_results.parse_destinations); a suffix [sc+sr+seg] picks the objects one "
        "destination gets (default: all)",
    )
    result_not_eligible_report: bool = Field(
        default=False,
        description="also file a not-analysed report for studies that are not chest "
        "radiographs (another modality or body part); off: they get nothing",
    )
    result_dicomweb_token: SecretStr | None = Field(
        default=None, description="bearer token sent to DICOMweb result destinations"
    )
    result_dicomweb_username: str | None = Field(
        default=None, description="HTTP basic auth user for DICOMweb result destinations"
    )
    result_dicomweb_password: SecretStr | None = Field(
        default=None, description="its password (with CXR_RESULT_DICOMWEB_USERNAME)"
    )
    result_calling_ae_title: str = Field(default="CXR_TRIAGE", max_length=16)
    result_max_retries: int = Field(
        default=12, ge=0, description="retries per result version before results_failed"
    )
    result_retry_max_backoff_s: int = Field(
        default=300,
        ge=1,
        lt=BROKER_VISIBILITY_TIMEOUT_S,
        description="longest wait between retries (1, 2, 4, ... s up to this)",
    )
    result_timeout_s: float = Field(
        default=30.0, gt=0, description="TCP connect / association answer timeout per attempt"
    )
    result_heartbeat_file: Path | None = Field(
        default=None, description="touched every 10 s while send-results runs (healthchecks)"
    )
    # escalation webhooks (the outbox the scheduler writes; cxr_sender.escalation)
    escalation_timeout_s: float = Field(
        default=10.0, gt=0, description="connect and answer timeout of one webhook POST"
    )
    escalation_max_attempts: int = Field(
        default=8, ge=1, description="POSTs per escalation and webhook before it is failed"
    )
    escalation_retry_max_backoff_s: float = Field(
        default=300.0, gt=0, description="longest wait between webhook retries (1, 2, 4 ... s)"
    )
    escalation_poll_s: float = Field(
        default=2.0, gt=0, description="how often the results sender looks for due webhooks"
    )

    # HL7 v2 results to the RIS (ORU^R01 over MLLP; cxr_hl7, cxr_sender.hl7)
    hl7_destinations: str = Field(
        default="",
        description="host:port[,...] of MLLP receivers; empty = no HL7 is sent (checked at "
        "start by cxr_hl7.parse_hl7_destinations); retried as the results job is "
        "(CXR_RESULT_MAX_RETRIES, CXR_RESULT_RETRY_MAX_BACKOFF_S)",
    )
    hl7_sending_application: str = Field(default="CXR_TRIAGE", description="MSH-3")
    hl7_sending_facility: str = Field(default="", description="MSH-4")
    hl7_receiving_application: str = Field(default="", description="MSH-5")
    hl7_receiving_facility: str = Field(default="", description="MSH-6")
    hl7_timeout_s: float = Field(
        default=30.0, gt=0, le=300, description="connect, send and wait-for-ACK timeout"
    )

    @field_validator(
        "hl7_sending_application",
        "hl7_sending_facility",
        "hl7_receiving_application",
        "hl7_receiving_facility",
    )
    @classmethod
    def _hd_ok(cls, value: str) -> str:
        value = value.strip()
        if len(value) > 20:
            raise ValueError("an MSH application or facility is at most 20 characters")
        if not value.isascii() or not value.isprintable() or any(c in value for c in "|^~\\&"):
            raise ValueError("an MSH application or facility is printable ASCII without | ^ ~ \\ &")
        return value

    @field_validator("result_calling_ae_title")
    @classmethod
    def _calling_ae_title_ok(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or not value.isascii() or not value.isprintable():
            raise ValueError("AE title must be 1-16 printable ASCII characters without backslash")
        return value

    @field_validator(
        "result_dicomweb_token",
        "result_dicomweb_username",
        "result_dicomweb_password",
        mode="before",
    )
    @classmethod
    def _empty_credential_is_unset(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @model_validator(mode="after")
    def _one_dicomweb_auth(self) -> Self:
        basic = self.result_dicomweb_username is not None
        if basic != (self.result_dicomweb_password is not None):
            raise ValueError(
                "set both CXR_RESULT_DICOMWEB_USERNAME and CXR_RESULT_DICOMWEB_PASSWORD, or neither"
            )
        if basic and self.result_dicomweb_token is not None:
            raise ValueError(
                "set CXR_RESULT_DICOMWEB_TOKEN or CXR_RESULT_DICOMWEB_USERNAME/_PASSWORD, not both"
            )
        return self

    # DICOM TLS to the destinations (issue 20): on when a CA is set
    result_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: results go over DICOM TLS, the destination's certificate "
        "must be signed by it and name the destination's host",
    )
    result_tls_cert: Path | None = Field(
        default=None, description="PEM client certificate we present (destinations that ask)"
    )
    result_tls_key: Path | None = Field(default=None, description="PEM private key of the cert")

    @field_validator("result_tls_ca", "result_tls_cert", "result_tls_key", mode="before")
    @classmethod
    def _empty_result_tls_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _result_tls_ok(self) -> Self:
        if (self.result_tls_cert is None) != (self.result_tls_key is None):
            raise ValueError("set both CXR_RESULT_TLS_CERT and CXR_RESULT_TLS_KEY, or neither")
        if self.result_tls_cert is not None and self.result_tls_ca is None:
            raise ValueError("a client certificate (CXR_RESULT_TLS_CERT) needs CXR_RESULT_TLS_CA")
        for path in (self.result_tls_ca, self.result_tls_cert, self.result_tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"results TLS file {path} is not a readable file")
        return self


class SupervisorSettings(
    ListenerSettings, SchedulerSettings, WorkerSettings, WebSettings, ResultSettings
):
    """``cxr-triage up`` and ``demo``: every setting of the children they start (listener,
    scheduler, workers, results, web), checked before any starts, and the addresses they
    print."""


def normalise_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad setting, named by its environment variable; never the value (a
    URL may hold a password)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = f"CXR_{str(error['loc'][0]).upper()}" if error["loc"] else exc.title
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def listener_settings() -> ListenerSettings:
    return ListenerSettings()


def scheduler_settings() -> SchedulerSettings:
    return SchedulerSettings()


def worker_settings() -> WorkerSettings:
    return WorkerSettings()


def web_settings() -> WebSettings:
    return WebSettings()


def result_settings() -> ResultSettings:
    return ResultSettings()


def common_settings() -> CommonSettings:
    return CommonSettings()
