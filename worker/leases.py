"""The leases a worker process holds, renewed by one thread, and what it has achieved.

A job claims its instance (``cxr_db.instances.writes.claim_instance``) and hands the id to
:class:`LeaseKeeper`; one renewer thread per process extends every held lease every
``renew_s`` seconds in a single UPDATE. A job held longer than ``max_hold_s`` (the task
time limit: the threads pool cannot kill a stuck thread) is no longer renewed, so its
lease lapses and another worker reclaims it. If the process dies, every lease lapses
within ``ttl_s`` and the listener's reconciler puts the instances back in work.

:class:`Progress` records when a job or a batch last finished, for the heartbeat file
(``worker.app``): a process that holds jobs but finishes none is stuck, and says so by
leaving the file alone.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from cxr_db.instances import writes as repo

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews this process's leases until stopped."""

    def __init__(
        self, engine: Engine, owner: str, *, ttl_s: float, renew_s: float, max_hold_s: float
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.max_hold_s = max_hold_s
        self._held: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cxr-lease-renewer", daemon=True)

    def hold(self, instance_id: int) -> None:
        with self._lock:
            self._held[instance_id] = time.monotonic()

    def drop(self, instance_id: int) -> None:
        with self._lock:
            self._held.pop(instance_id, None)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def renew_once(self) -> set[int]:
        """Extend the leases of held jobs younger than ``max_hold_s``; returns the ids
        still held in the database. Database errors propagate (the loop logs them)."""
        now = time.monotonic()
        with self._lock:
            fresh = [i for i, since in self._held.items() if now - since < self.max_hold_s]
            stuck = len(self._held) - len(fresh)
        if stuck:
            log.warning("%d job(s) past the task time limit: their leases are left to lapse", stuck)
        kept = repo.renew_leases(self.engine, self.owner, fresh, self.ttl_s)
        lost = set(fresh) - kept
        if lost:
            log.warning("lost the lease on %d instance(s) (reclaimed or made final)", len(lost))
        return kept

    def _loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew_once()
            except DBAPIError as exc:
                log.warning("cannot renew leases: database unavailable (%s)", type(exc).__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.renew_s + 5)


class Progress:
    """When a job or a batch last finished, and how many jobs are in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last = time.monotonic()

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self) -> None:
        with self._lock:
            self._in_flight = max(self._in_flight - 1, 0)
            self._last = time.monotonic()

    def advanced(self) -> None:
        """A batch ran (its jobs may still be recording)."""
        with self._lock:
            self._last = time.monotonic()

    def snapshot(self) -> tuple[int, float]:
        """(jobs in flight, seconds since the last job or batch finished)."""
        with self._lock:
            return self._in_flight, time.monotonic() - self._last
