"""The in-process limits of the web app (``worklist.throttle``) and the bounded password
hashing (``cxr_common.passwords``), with a fake clock: no sleeps."""

from __future__ import annotations

import threading

import pytest
from argon2 import PasswordHasher

from cxr_common.passwords import Passwords, PasswordsBusyError
from worklist.app import host_allowed
from worklist.throttle import AttemptThrottle, NameLocks, RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_counts_failures_per_address_within_the_window() -> None:
    clock = Clock()
    throttle = AttemptThrottle(3, 60, clock=clock)
    for _ in range(3):
        assert throttle.begin("10.0.0.1") is None
        throttle.end("10.0.0.1", failed=True)
        clock.now += 10
    assert throttle.begin("10.0.0.1") == 30  # the first failure leaves the window in 30 s
    assert throttle.begin("10.0.0.2") is None, "another address is not affected"
    clock.now += 30
    assert throttle.begin("10.0.0.1") is None


def test_throttle_counts_attempts_in_progress() -> None:
    """A parallel burst cannot pass the check before its first failure is counted."""
    throttle = AttemptThrottle(2, 60, clock=Clock())
    assert throttle.begin("a") is None
    assert throttle.begin("a") is None
    assert throttle.begin("a") == 1
    throttle.end("a", failed=False)  # a success does not count
    assert throttle.begin("a") is None


def test_throttle_forgets_the_oldest_addresses_past_its_bound() -> None:
    throttle = AttemptThrottle(1, 60, clock=Clock(), max_keys=2)
    for addr in ("a", "b", "c"):
        assert throttle.begin(addr) is None
        throttle.end(addr, failed=True)
    assert throttle.begin("a") is None, "'a' was dropped to bound memory"
    assert throttle.begin("c") is not None


def test_throttle_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="limit"):
        AttemptThrottle(0, 60)


def test_refusal_log_admits_one_row_per_address_and_kind_per_period() -> None:
    clock = Clock()
    log = RefusalLog(60, clock=clock)
    assert log.admit("a", "csrf") == 0
    assert log.admit("a", "csrf") is None
    assert log.admit("a", "csrf") is None
    assert log.admit("a", "host") == 0, "another kind has its own row"
    assert log.admit("b", "csrf") == 0, "another address has its own row"
    clock.now += 60
    assert log.admit("a", "csrf") == 2, "the next row says how many were left out"


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("127.0.0.1:8080", ("127.0.0.1",), True),
        ("[::1]:8080", ("::1",), True),
        ("LOCALHOST", ("localhost",), True),
        ("attacker.example", ("localhost",), False),
        ("", ("localhost",), False),
        ("a.worklist.example", ("*.worklist.example",), True),
        ("worklist.example.evil", ("*.worklist.example",), False),
        ("anything", ("*",), True),
    ],
)
def test_host_allowed(host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


class _Gated(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.entered.set()
        assert self.gate.wait(30)
        return super().verify(hash, password)


def test_passwords_run_at_most_max_concurrent_hashes() -> None:
    hasher = _Gated()
    passwords = Passwords(hasher, max_concurrent=1, wait_s=0.05)
    stored = passwords.hash("correct horse battery staple")
    results: list[bool] = []
    worker = threading.Thread(
        target=lambda: results.append(passwords.verify(stored, "correct horse battery staple"))
    )
    worker.start()
    assert hasher.entered.wait(30)
    with pytest.raises(PasswordsBusyError, match="1 password checks are running"):
        passwords.verify(stored, "anything")
    with pytest.raises(PasswordsBusyError):
        passwords.hash("another password!")
    hasher.gate.set()
    worker.join(30)
    assert results == [True]
    assert passwords.verify(stored, "wrong password!!") is False, "the slot was given back"
    with pytest.raises(ValueError, match="max_concurrent"):
        Passwords(max_concurrent=0)


def test_name_locks_mirror_account_lock_outs() -> None:
    clock = Clock()
    locks = NameLocks(3, 900, clock=clock)
    key = NameLocks.key("Nobody-Here", "10.0.0.1")
    assert key == NameLocks.key("nobody-here ", "10.0.0.1")
    assert "nobody" not in key, "the typed name is kept nowhere"
    assert locks.locked(key) is None
    assert [locks.fail(key) for _ in range(3)] == [None, None, 900]
    clock.now += 100
    assert locks.locked(key) == 800
    assert locks.fail(key) == 800, "a failure while locked does not extend or lift it"
    assert locks.locked(NameLocks.key("nobody-here", "10.0.0.2")) is None
    clock.now += 800
    assert locks.locked(key) is None
    assert locks.fail(key) is None, "the count starts again after a lock-out"
