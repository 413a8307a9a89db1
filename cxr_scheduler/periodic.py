"""A job the scheduler runs every few seconds in a daemon thread (the reconciler, the study
completeness monitor): one loop, one start and stop, and a failed pass never ends it.

Each job knows whether it is healthy: its thread runs and a pass succeeded (or it started)
within ``max(HEALTHY_WITHIN_S, 3 * interval_s)``; the scheduler's heartbeat needs both."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

#: A job whose last good pass is older than this (or three intervals) is not healthy.
HEALTHY_WITHIN_S = 60.0


class PeriodicJob:
    """Run ``run_once`` every ``interval_s`` seconds until ``stop``; subclasses implement it
    and set ``pass_failed`` when a pass could not do its work without raising."""

    #: Names the thread and the log line of a failed pass.
    name = "periodic job"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.pass_failed = False
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"cxr-{self.name.replace(' ', '-')}", daemon=True
        )

    def run_once(self) -> int:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.pass_failed = False
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; next pass retries
                logger.warning("%s pass failed (%s)", self.name, type(exc).__name__)
                continue
            if not self.pass_failed:
                self._last_ok = time.monotonic()

    def healthy(self) -> bool:
        """Running, and a pass succeeded recently (or the job just started)."""
        within = max(HEALTHY_WITHIN_S, 3 * self.interval_s)
        return self._thread.is_alive() and time.monotonic() - self._last_ok < within

    def start(self) -> None:
        self._last_ok = time.monotonic()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
