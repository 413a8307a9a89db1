"""Serve the worklist app with uvicorn until SIGINT/SIGTERM, then exit 0."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from cxr_common.lifecycle import stop_on_signals
from cxr_common.settings import WebSettings
from cxr_db import make_engine
from worklist.app import create_app

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after its graceful shutdown, which ends the
    process with 143 before our clean-up runs; ``run_web`` handles the signals itself."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_web(settings: WebSettings) -> int:
    """Serve on ``settings.web_host:settings.web_port`` until SIGINT/SIGTERM; 0 after a
    clean stop, 1 if the server could not start (e.g. the port is taken). Logging is the
    caller's (``log_config=None``); access logs carry paths (UIDs), never patient data."""
    engine = make_engine(settings.database_url_value())
    config = uvicorn.Config(
        create_app(engine),
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )
    server = _Server(config)

    def _exit() -> None:
        server.should_exit = True

    try:
        with stop_on_signals("the web worklist", on_stop=_exit):
            logger.info("worklist web app on http://%s:%d/", settings.web_host, settings.web_port)
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
