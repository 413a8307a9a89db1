"""Serve the worklist app with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

import uvicorn

from cxr_common.settings import WebSettings
from cxr_db import make_engine
from worklist.app import create_app

logger = logging.getLogger(__name__)


def run_web(settings: WebSettings) -> int:
    """Serve on ``settings.web_host:settings.web_port``; uvicorn stops cleanly on
    SIGINT/SIGTERM. Logging is the caller's (``log_config=None``)."""
    engine = make_engine(settings.database_url_value())
    try:
        config = uvicorn.Config(
            create_app(engine),
            host=settings.web_host,
            port=settings.web_port,
            log_config=None,
            access_log=True,
            server_header=False,
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
        logger.info("worklist web app on http://%s:%d/", settings.web_host, settings.web_port)
        server.run()
        return 0 if server.started else 1
    finally:
        engine.dispose()
