"""Password hashing, the password policy and reading a new password from stdin (no services)."""

from __future__ import annotations

import io

import pytest
from argon2 import PasswordHasher

from cxr_common.passwords import (
    MIN_PASSWORD_LENGTH,
    Passwords,
    WeakPasswordError,
    check_password_policy,
)
from cxr_triage import accounts_cli

GOOD = "correct horse battery staple"


def _cheap(time_cost: int = 1) -> Passwords:
    return Passwords(PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1))


@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("", "empty"),
        ("   \t  ", "whitespace"),
        ("x" * (MIN_PASSWORD_LENGTH - 1), "too short"),
        ("x" * 2000, "too long"),
    ],
)
def test_policy_refuses_with_a_message_that_never_echoes_the_password(
    password: str, words: str
) -> None:
    with pytest.raises(WeakPasswordError, match=words) as info:
        check_password_policy(password)
    if password.strip():
        assert password not in str(info.value)


def test_policy_accepts_a_passphrase() -> None:
    check_password_policy(GOOD)


def test_hash_verify_and_rehash() -> None:
    weak, strong = _cheap(1), _cheap(2)
    stored = weak.hash(GOOD)
    assert stored.startswith("$argon2id$")
    assert GOOD not in stored
    assert weak.verify(stored, GOOD)
    assert not weak.verify(stored, GOOD + "!")
    assert not weak.verify("not a hash", GOOD)
    assert not weak.needs_rehash(stored)
    assert strong.needs_rehash(stored)
    assert strong.verify(stored, GOOD)  # old hashes still verify before they are replaced
    assert strong.needs_rehash("not a hash")
    weak.burn(GOOD)  # no exception, no result: only the work


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_new_password_from_a_pipe_is_one_line_without_its_line_ending() -> None:
    assert accounts_cli.read_new_password("a", io.StringIO(GOOD + "\r\n" + "ignored\n")) == GOOD
    assert accounts_cli.read_new_password("a", io.StringIO(GOOD)) == GOOD
    with pytest.raises(WeakPasswordError, match="no password on standard input"):
        accounts_cli.read_new_password("a", io.StringIO(""))
    with pytest.raises(WeakPasswordError, match="empty"):
        accounts_cli.read_new_password("a", io.StringIO("\n"))


def test_new_password_on_a_terminal_is_prompted_twice_without_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([GOOD, GOOD])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(accounts_cli.getpass, "getpass", fake_getpass)
    assert accounts_cli.read_new_password("alice", _Terminal()) == GOOD
    assert prompts == ["New password for alice: ", "Repeat the password: "]

    answers = iter([GOOD, GOOD + "x"])
    with pytest.raises(WeakPasswordError, match="differ"):
        accounts_cli.read_new_password("alice", _Terminal())
