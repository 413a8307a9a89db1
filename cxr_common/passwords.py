"""Password hashing with argon2id (argon2-cffi's ``PasswordHasher``) and the password policy.

Plain-text passwords go in and come out of nothing here: no function logs, returns or
stores one. ``Passwords.verify`` never raises on a wrong or malformed hash; ``burn`` spends
the same work on an unknown user name so that sign-in answers take about the same time
whether or not the user exists.
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


class Passwords:
    """argon2id hashing with one set of parameters (argon2-cffi's defaults, RFC 9106's
    low-memory profile, unless a ``PasswordHasher`` is given)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        """True when ``password`` matches; False for a mismatch or an unreadable hash."""
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

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
                self._dummy = self._hasher.hash("cxr-triage: no such user, no such password")
            dummy = self._dummy
        self.verify(dummy, password)
