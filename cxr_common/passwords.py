"""Password hashing with argon2id (argon2-cffi's ``PasswordHasher``) and the password policy.

Plain-text passwords go in and come out of nothing here: no function logs, returns or
stores one. ``Passwords.verify`` never raises on a wrong or malformed hash; ``burn`` spends
the same work on an unknown user name so that sign-in answers take about the same time
whether or not the user exists.

Each hash costs memory (64 MiB with the default parameters) and a core, so a
``Passwords`` runs at most ``max_concurrent`` of them at once (a semaphore); a caller that
finds no slot free within ``wait_s`` gets ``PasswordsBusyError`` instead of queueing
without bound (the web app answers 503 with ``Retry-After``).
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cxr_common.errors import CxrTriageError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this bounds the work per attempt


class WeakPasswordError(CxrTriageError):
    """A new password breaks the policy; the message says which rule (never the password)."""


def check_password_policy(password: str) -> None:
    """Refuse empty, short, over-long or all-whitespace passwords with a clear message."""
    if not password:
        raise WeakPasswordError("the password is empty")
    if not password.strip():
        raise WeakPasswordError("the password is only whitespace")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
        )


class PasswordsBusyError(CxrTriageError):
    """Every hashing slot stayed taken for ``wait_s``: try again shortly."""


DEFAULT_MAX_CONCURRENT = 4
DEFAULT_WAIT_S = 10.0


class Passwords:
    """argon2id hashing with one set of parameters (argon2-cffi's defaults, RFC 9106's
    low-memory profile, unless a ``PasswordHasher`` is given), at most ``max_concurrent``
    hashes at once."""

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s

    def _slot(self) -> None:
        if not self._slots.acquire(timeout=self.wait_s):
            raise PasswordsBusyError(
                f"{self.max_concurrent} password checks are running: try again shortly"
            )

    def hash(self, password: str) -> str:
        self._slot()
        try:
            return self._hasher.hash(password)
        finally:
            self._slots.release()

    def verify(self, stored_hash: str, password: str) -> bool:
        """True when ``password`` matches; False for a mismatch or an unreadable hash.
        ``PasswordsBusyError`` when no hashing slot is free within ``wait_s``."""
        self._slot()
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        finally:
            self._slots.release()

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def burn(self, password: str) -> None:
        """Spend one verification's work on a hash no password matches (unknown user)."""
        with self._lock:
            if self._dummy is None:
                self._dummy = self.hash("cxr-triage: no such user, no such password")
            dummy = self._dummy
        self.verify(dummy, password)
