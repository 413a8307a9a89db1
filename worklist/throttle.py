"""In-process limits per client address: failed sign-ins (``AttemptThrottle``), lock-outs
of user names that name no account (``NameLocks``) and the audit rows of refused requests
(``RefusalLog``).

Both live in the web process's memory (one uvicorn process serves the app; see
``worklist.server``); lock-outs that must outlive it, or be lifted from the command line,
are in Postgres (``cxr_db.accounts``: per account and client address). Each table is
bounded: the oldest keys are dropped past ``max_keys``, so a flood of made-up addresses
cannot grow it without end.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class _Attempts:
    failures: deque[float] = field(default_factory=deque)
    in_flight: int = 0


class AttemptThrottle:
    """At most ``limit`` failed attempts per key (a client address) in ``window_s``,
    whatever account they name. An attempt in progress counts until it ends, so a burst of
    parallel attempts cannot all pass the check before the first failure is counted."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be at least 1 and window_s positive")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Attempts] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, entry: _Attempts, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.window_s:
            entry.failures.popleft()

    def begin(self, key: str) -> int | None:
        """Reserve an attempt for ``key``: None when it may go ahead (call ``end`` after),
        else the whole seconds to wait (for ``Retry-After``)."""
        with self._lock:
            now = self._clock()
            entry = self._keys.get(key)
            if entry is None:
                entry = self._keys[key] = _Attempts()
                while len(self._keys) > self._max_keys:
                    self._keys.popitem(last=False)
            self._keys.move_to_end(key)
            self._prune(entry, now)
            if len(entry.failures) + entry.in_flight >= self.limit:
                if entry.failures:
                    wait = entry.failures[0] + self.window_s - now
                else:  # only attempts in progress: they end within seconds
                    wait = 1.0
                return max(1, math.ceil(wait))
            entry.in_flight += 1
            return None

    def end(self, key: str, *, failed: bool) -> None:
        """The attempt reserved by ``begin`` is over; a failure counts for ``window_s``."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return
            entry.in_flight = max(0, entry.in_flight - 1)
            if failed:
                entry.failures.append(self._clock())
            elif not entry.failures and entry.in_flight == 0:
                del self._keys[key]


class RefusalLog:
    """Decides which refused requests get an audit row: the first of each (client address,
    kind) and then at most one per ``every_s``; ``admit`` returns how many were left out
    since the last row (None: leave this one out too)."""

    def __init__(
        self, every_s: float, *, clock: Clock = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.every_s = every_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, client_addr: str, kind: str) -> int | None:
        key = (client_addr, kind)
        with self._lock:
            now = self._clock()
            last = self._keys.get(key)
            if last is not None and now - last[0] < self.every_s:
                self._keys[key] = (last[0], last[1] + 1)
                return None
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
            return last[1] if last is not None else 0


class NameLocks:
    """Lock-outs for sign-ins naming **no** account, kept as ``cxr_db.accounts`` keeps them
    for real ones (``max_failures`` in a row from one address lock that name there for
    ``lockout_s``), so the answers do not tell which user names exist. Keys are hashes of
    the typed name with the address; the typed name itself is kept nowhere."""

    def __init__(
        self,
        max_failures: int,
        lockout_s: float,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, until
        self._lock = threading.Lock()

    @staticmethod
    def key(username: str, client_addr: str) -> str:
        digest = hashlib.sha256(username.strip().lower().encode("utf-8")).hexdigest()
        return f"{digest}|{client_addr}"

    def locked(self, key: str) -> int | None:
        """Whole seconds left of the lock-out of ``key``; None when not locked."""
        with self._lock:
            _, until = self._keys.get(key, (0, 0.0))
            left = until - self._clock()
            return max(1, math.ceil(left)) if left > 0 else None

    def fail(self, key: str) -> int | None:
        """Count a failed sign-in; the lock-out's seconds when this one locks the name."""
        with self._lock:
            now = self._clock()
            failures, until = self._keys.get(key, (0, 0.0))
            if until > now:
                return max(1, math.ceil(until - now))
            failures = 0 if until else failures
            failures += 1
            if failures >= self.max_failures:
                self._keys[key] = (0, now + self.lockout_s)
                left: int | None = max(1, math.ceil(self.lockout_s))
            else:
                self._keys[key] = (failures, 0.0)
                left = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
            return left
