"""A job the listener runs every few seconds in a daemon thread (the reconciler, the study
completeness monitor): one loop, one start and stop, and a failed pass never ends it."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class PeriodicJob:
    """Run ``run_once`` every ``interval_s`` seconds until ``stop``; subclasses implement it."""

    #: Names the thread and the log line of a failed pass.
    name = "periodic job"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"cxr-{self.name.replace(' ', '-')}", daemon=True
        )

    def run_once(self) -> int:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; next pass retries
                logger.warning("%s pass failed (%s)", self.name, type(exc).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
