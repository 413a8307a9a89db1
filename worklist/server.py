"""Serve the worklist app with uvicorn until SIGINT/SIGTERM, then exit 0."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from sqlalchemy import Engine

from cxr_common.lifecycle import stop_on_signals
from cxr_common.settings import WebSettings
from cxr_common.storage import open_storage
from cxr_db import make_engine
from cxr_ingest import Ingest, load_or_create_patient_key
from cxr_results import load_or_create_uid_root
from worklist.app import create_app
from worklist.config import WebConfig

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after its graceful shutdown, which ends the
    process with 143 before our clean-up runs; ``run_web`` handles the signals itself."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def stow_rules(settings: WebSettings, engine: Engine) -> Ingest | None:
    """The ingest rules STOW-RS stores through: the listener's storage, limits and UID root
    (our own result objects are acknowledged and dropped), and a Celery app publishing the
    scoring jobs (the process entry point is the one place the web reaches the queue
    package: an import-linter contract). None without a broker: STOW-RS answers 503."""
    if settings.broker_url is None:
        logger.warning("no CXR_BROKER_URL: STOW-RS (POST /dicomweb/studies) is disabled")
        return None
    from cxr_queue import make_celery

    return Ingest(
        engine,
        open_storage(settings.resolved_storage_uri),
        make_celery(settings.broker_url_value(), settings.queue_name),
        settings.queue_name,
        limits=settings.decode_limits(),
        uid_root=load_or_create_uid_root(settings.uid_root_file, settings.uid_root),
        patient_key=load_or_create_patient_key(
            settings.patient_key_file, settings.patient_key_value()
        ),
    )


def run_web(settings: WebSettings) -> int:
    """Serve on ``settings.web_host:settings.web_port`` until SIGINT/SIGTERM; 0 after a
    clean stop, 1 if the server could not start (e.g. the port is taken). HTTPS directly
    when ``CXR_WEB_TLS_CERT``/``CXR_WEB_TLS_KEY`` are set. Logging is the caller's
    (``log_config=None``); uvicorn's access log is off: the app logs method, path (UIDs,
    never a query string) and status itself, never patient data or credentials."""
    engine = make_engine(settings.database_url_value())
    tls: dict[str, str] = {}
    if settings.web_tls_cert is not None and settings.web_tls_key is not None:
        tls = {
            "ssl_certfile": str(settings.web_tls_cert),
            "ssl_keyfile": str(settings.web_tls_key),
        }
    config = uvicorn.Config(
        create_app(engine, WebConfig.from_settings(settings), stow_rules(settings, engine)),
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        **tls,  # type: ignore[arg-type]
    )
    server = _Server(config)

    def _exit() -> None:
        server.should_exit = True

    try:
        with stop_on_signals("the web worklist", on_stop=_exit):
            logger.info(
                "worklist web app on %s://%s:%d/",
                "https" if tls else "http",
                settings.web_host,
                settings.web_port,
            )
            server.run()
    except SystemExit as exc:  # uvicorn's way to report that it could not start
        logger.error(
            "web worklist could not start on %s:%d (uvicorn exit %s)",
            settings.web_host,
            settings.web_port,
            exc.code,
        )
        return 1
    finally:
        engine.dispose()
    return 0 if server.started else 1
