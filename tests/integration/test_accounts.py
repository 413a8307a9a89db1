"""Users, sign-in with lock-out, server-side sessions, API tokens and their CLI, on real
Postgres. Timeouts are checked by passing ``now=``, never by waiting."""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text

from cxr_common.passwords import WeakPasswordError
from cxr_db.accounts import store as accounts
from cxr_db.accounts.store import SignInOutcome, SignInPolicy
from cxr_db.accounts.tables import ApiToken, Role, User
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.errors import (
    InvalidNameError,
    TokenExistsError,
    UnknownTokenError,
    UnknownUserError,
    UserExistsError,
)
from cxr_triage import accounts_cli
from tests.conftest import Services
from tests.integration.reading_rows import (
    ADMIN,
    PASSWORD,
    add_user,
    audit_after,
    audit_mark,
    cheap_passwords,
    clean,
    db_now,
)

pytestmark = pytest.mark.integration

POLICY = SignInPolicy(
    max_failures=3,
    lockout=timedelta(minutes=15),
    idle_timeout=timedelta(minutes=30),
    absolute_timeout=timedelta(hours=12),
)


@pytest.fixture
def db(engine: Engine) -> Engine:
    return clean(engine)


def _sign_in(db: Engine, name: str, password: str, **kw: object) -> accounts.SignInResult:
    return accounts.sign_in(
        db,
        name,
        password,
        passwords=cheap_passwords(),
        policy=POLICY,
        **kw,  # type: ignore[arg-type]
    )


def test_orm_schema_matches_the_migrations(services: Services) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from cxr_db.schema import Base

    eng = create_engine(services.database_url)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    eng.dispose()
    assert diff == []


def test_add_user_stores_an_argon2id_hash_and_audits(db: Engine) -> None:
    mark = audit_mark(db)
    user = add_user(db, "alice", Role.RADIOLOGIST)
    assert user.role is Role.RADIOLOGIST
    assert not user.disabled
    with db.connect() as conn:
        stored = conn.execute(select(User.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    (entry,) = audit_after(db, mark)
    assert (entry.action, entry.actor, entry.actor_kind, entry.target) == (
        AuditAction.USER_ADD,
        "cli:test",
        "cli",
        "alice",
    )
    assert entry.detail == {"role": "radiologist"}


def test_add_user_refuses_weak_passwords_bad_names_and_duplicates(db: Engine) -> None:
    pw = cheap_passwords()
    for bad, words in [("", "empty"), ("short", "too short"), (" " * 20, "whitespace")]:
        with pytest.raises(WeakPasswordError, match=words):
            accounts.add_user(db, "bob", bad, Role.ADMIN, passwords=pw, actor=ADMIN)
    for name in ["", "-leading-dash", "has space", "x" * 65, "=cmd()"]:
        with pytest.raises(InvalidNameError):
            accounts.add_user(db, name, PASSWORD, Role.ADMIN, passwords=pw, actor=ADMIN)
    add_user(db, "Carol")
    with pytest.raises(UserExistsError, match="already exists"):
        add_user(db, "carol")
    assert [u.username for u in accounts.list_users(db)] == ["Carol"]


def test_role_is_validated_by_postgres_too(db: Engine) -> None:
    with pytest.raises(Exception, match="users_role_valid"), db.begin() as conn:
        conn.execute(
            text("INSERT INTO users (username, role, password_hash) VALUES ('x', 'root', 'h')")
        )


def test_sign_in_starts_a_session_and_rehashes_old_parameters(db: Engine) -> None:
    add_user(db, "dana", passwords=cheap_passwords(time_cost=1))
    with db.connect() as conn:
        old_hash = conn.execute(select(User.password_hash)).scalar_one()
    mark = audit_mark(db)
    stronger = cheap_passwords(time_cost=2)
    result = accounts.sign_in(
        db, "DANA", PASSWORD, passwords=stronger, policy=POLICY, client_addr="10.0.0.7"
    )
    assert result.ok
    assert result.session is not None
    assert result.user is not None
    assert result.user.last_login_at is not None
    with db.connect() as conn:
        new_hash = conn.execute(select(User.password_hash)).scalar_one()
    assert new_hash != old_hash
    assert "t=2" in new_hash
    assert not stronger.needs_rehash(new_hash)
    (entry,) = audit_after(db, mark)
    assert (entry.action, entry.actor, entry.client_addr) == (
        AuditAction.SIGN_IN,
        "dana",
        "10.0.0.7",
    )
    assert entry.detail == {"rehashed": True}
    session = accounts.get_session(db, result.session.secret, policy=POLICY)
    assert session is not None
    assert session.user.username == "dana"
    assert session.csrf_token == result.session.csrf_token


def test_lock_out_after_repeated_failures_then_unlock_after_the_lockout(db: Engine) -> None:
    add_user(db, "erin")
    t0 = db_now(db)
    mark = audit_mark(db)
    outcomes = [_sign_in(db, "erin", "wrong password!", now=t0).outcome for _ in range(3)]
    assert outcomes == [
        SignInOutcome.BAD_CREDENTIALS,
        SignInOutcome.BAD_CREDENTIALS,
        SignInOutcome.LOCKED,
    ]
    # Locked: even the right password is refused, and no session starts.
    locked = _sign_in(db, "erin", PASSWORD, now=t0 + timedelta(minutes=14))
    assert locked.outcome is SignInOutcome.LOCKED
    assert locked.session is None
    user = accounts.get_user(db, "erin")
    assert user is not None
    assert user.locked_until == t0 + timedelta(minutes=15)
    actions = [e.action for e in audit_after(db, mark)]
    assert actions == [
        "sign_in_failed",
        "sign_in_failed",
        "sign_in_failed",
        "account_locked",
        "sign_in_failed",
    ]
    later = _sign_in(db, "erin", PASSWORD, now=t0 + timedelta(minutes=16))
    assert later.ok
    user = accounts.get_user(db, "erin")
    assert user is not None
    assert user.failed_logins == 0
    assert user.locked_until is None


def test_a_success_resets_the_failure_count(db: Engine) -> None:
    add_user(db, "fay")
    for _ in range(2):
        assert not _sign_in(db, "fay", "wrong password!").ok
    assert _sign_in(db, "fay", PASSWORD).ok
    for _ in range(2):
        assert _sign_in(db, "fay", "wrong password!").outcome is SignInOutcome.BAD_CREDENTIALS


def test_unknown_user_is_refused_without_keeping_the_typed_name(db: Engine) -> None:
    mark = audit_mark(db)
    typed = "my secret passphrase typed in the wrong box"
    result = _sign_in(db, typed, PASSWORD, client_addr="10.0.0.9")
    assert result.outcome is SignInOutcome.BAD_CREDENTIALS
    assert result.user is None
    (entry,) = audit_after(db, mark)
    assert entry.action == "sign_in_failed"
    assert entry.actor_kind == ActorKind.ANONYMOUS
    assert typed not in repr(entry)
    assert entry.detail == {"reason": "unknown_user"}


def test_disabling_a_user_refuses_sign_in_and_ends_sessions(db: Engine) -> None:
    add_user(db, "gus")
    signed = _sign_in(db, "gus", PASSWORD)
    assert signed.session is not None
    mark = audit_mark(db)
    accounts.disable_user(db, "GUS", actor=ADMIN)
    assert accounts.get_session(db, signed.session.secret, policy=POLICY) is None
    assert _sign_in(db, "gus", PASSWORD).outcome is SignInOutcome.DISABLED
    entries = audit_after(db, mark)
    assert entries[0].action == "user_disable"
    assert entries[0].detail == {"sessions_ended": 1, "claims_released": 0}
    with pytest.raises(UnknownUserError):
        accounts.disable_user(db, "nobody", actor=ADMIN)


def test_session_idle_timeout_and_absolute_expiry(db: Engine) -> None:
    add_user(db, "hal")
    t0 = db_now(db)
    signed = _sign_in(db, "hal", PASSWORD, now=t0)
    assert signed.session is not None
    secret = signed.session.secret
    # Each use moves the idle deadline; 29 minutes between uses keeps it alive.
    t = t0
    for _ in range(3):
        t += timedelta(minutes=29)
        assert accounts.get_session(db, secret, policy=POLICY, now=t) is not None
    mark = audit_mark(db)
    assert accounts.get_session(db, secret, policy=POLICY, now=t + timedelta(minutes=30)) is None
    # Deleted, not just refused: going back in time does not revive it.
    assert accounts.get_session(db, secret, policy=POLICY, now=t) is None
    (entry,) = audit_after(db, mark)
    assert entry.action == "session_expired"
    assert entry.detail == {"reason": "idle_timeout"}

    # Absolute expiry holds however often the session is used.
    signed = _sign_in(db, "hal", PASSWORD, now=t0)
    assert signed.session is not None
    t = t0
    while t + timedelta(minutes=25) < t0 + POLICY.absolute_timeout:
        t += timedelta(minutes=25)
        assert accounts.get_session(db, signed.session.secret, policy=POLICY, now=t)
    late = t0 + POLICY.absolute_timeout
    assert accounts.get_session(db, signed.session.secret, policy=POLICY, now=late) is None


def test_sign_out_ends_the_session_and_csrf_is_bound_to_it(db: Engine) -> None:
    add_user(db, "ivy")
    first = _sign_in(db, "ivy", PASSWORD)
    second = _sign_in(db, "ivy", PASSWORD)
    assert first.session is not None
    assert second.session is not None
    assert first.session.csrf_token != second.session.csrf_token
    assert accounts.csrf_matches(first.session.secret, first.session.csrf_token)
    assert not accounts.csrf_matches(first.session.secret, second.session.csrf_token)
    assert not accounts.csrf_matches(first.session.secret, None)
    mark = audit_mark(db)
    assert accounts.end_session(db, first.session.secret, client_addr="10.0.0.1")
    assert not accounts.end_session(db, first.session.secret)
    assert accounts.get_session(db, first.session.secret, policy=POLICY) is None
    assert accounts.get_session(db, second.session.secret, policy=POLICY) is not None
    assert [e.action for e in audit_after(db, mark)] == ["sign_out"]
    assert accounts.get_session(db, "not a session", policy=POLICY) is None
    assert accounts.get_session(db, "x" * 10_000, policy=POLICY) is None


def test_session_rows_hold_only_the_hash_of_the_secret(db: Engine) -> None:
    add_user(db, "jan")
    signed = _sign_in(db, "jan", PASSWORD)
    assert signed.session is not None
    with db.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM web_sessions")).all())
    assert signed.session.secret not in dump
    assert signed.session.csrf_token not in dump
    assert hashlib.sha256(signed.session.secret.encode()).hexdigest() in dump


def test_purge_expired_sessions(db: Engine) -> None:
    add_user(db, "kim")
    t0 = db_now(db)
    old = _sign_in(db, "kim", PASSWORD, now=t0 - timedelta(hours=1))
    fresh = _sign_in(db, "kim", PASSWORD, now=t0)
    assert old.session is not None
    assert fresh.session is not None
    assert accounts.purge_expired_sessions(db, policy=POLICY, now=t0) == 1
    assert accounts.get_session(db, fresh.session.secret, policy=POLICY, now=t0) is not None


def test_tokens_are_stored_hashed_verified_and_revoked(db: Engine) -> None:
    mark = audit_mark(db)
    created = accounts.create_token(db, "scraper", Role.OPS, actor=ADMIN)
    assert created.token.startswith("cxr_")
    assert len(created.token) >= 40
    with db.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM api_tokens")).all())
        stored = conn.execute(select(ApiToken.token_hash)).scalar_one()
    assert created.token not in dump
    assert stored == hashlib.sha256(created.token.encode()).hexdigest()

    info = accounts.verify_token(db, created.token)
    assert info is not None
    assert info.name == "scraper"
    assert info.role is Role.OPS
    assert accounts.list_tokens(db)[0].last_used_at is not None
    assert accounts.verify_token(db, "cxr_" + "A" * 43) is None
    assert accounts.verify_token(db, created.token + "x") is None
    assert accounts.verify_token(db, None) is None
    assert accounts.verify_token(db, "") is None

    with pytest.raises(TokenExistsError):
        accounts.create_token(db, "scraper", Role.ADMIN, actor=ADMIN)
    accounts.revoke_token(db, "scraper", actor=ADMIN)
    assert accounts.verify_token(db, created.token) is None
    with pytest.raises(UnknownTokenError):
        accounts.revoke_token(db, "scraper", actor=ADMIN)
    # The name is free again; the old token stays dead.
    again = accounts.create_token(db, "scraper", Role.OPS, actor=ADMIN)
    assert accounts.verify_token(db, again.token) is not None
    assert accounts.verify_token(db, created.token) is None
    assert [t.name for t in accounts.list_tokens(db, include_revoked=True)] == [
        "scraper",
        "scraper",
    ]
    assert [e.action for e in audit_after(db, mark)] == [
        "token_create",
        "token_revoke",
        "token_create",
    ]


# ------------------------------------------------------------------------------- CLI


def _parser(db: Engine) -> argparse.ArgumentParser:
    """The parser as ``cxr_triage.cli`` will wire it, with a runner that uses ``db``."""
    parser = argparse.ArgumentParser(prog="cxr-triage")
    sub = parser.add_subparsers(dest="command", required=True)
    accounts_cli.add_arguments(sub, run=lambda handler, args: handler(db, args))
    return parser


def _run(db: Engine, argv: list[str]) -> int:
    args = _parser(db).parse_args(argv)
    return int(args.func(args))


def test_cli_user_add_reads_the_password_from_stdin(
    db: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(accounts_cli, "Passwords", cheap_passwords)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert _run(db, ["user", "add", "lee", "--role", "admin"]) == 0
    out = capsys.readouterr()
    assert "user lee added with role admin" in out.out
    assert PASSWORD not in out.out + out.err
    assert _sign_in(db, "lee", PASSWORD).ok

    # No argument takes a password.
    with pytest.raises(SystemExit):
        _parser(db).parse_args(["user", "add", "max", "--role", "admin", "--password", "x"])
    # Short or missing passwords are refused with a clear message, nothing is created.
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(WeakPasswordError, match="at least 12 characters"):
        _run(db, ["user", "add", "max", "--role", "radiologist"])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(WeakPasswordError, match="no password on standard input"):
        _run(db, ["user", "add", "max", "--role", "radiologist"])
    with pytest.raises(SystemExit):
        _parser(db).parse_args(["user", "add", "max", "--role", "root"])
    assert accounts.get_user(db, "max") is None

    assert _run(db, ["user", "list"]) == 0
    listing = capsys.readouterr().out
    assert "lee" in listing
    assert "admin" in listing
    assert "active" in listing
    assert _run(db, ["user", "disable", "lee"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert _run(db, ["user", "list", "--json"]) == 0
    assert '"disabled": true' in capsys.readouterr().out


def test_cli_token_create_prints_the_token_once_then_revoke(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    mark = audit_mark(db)
    assert _run(db, ["token", "create", "prometheus", "--role", "ops"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("cxr_")
    assert out.out.count(token) == 1
    assert token not in out.err
    assert "shown once" in out.err
    info = accounts.verify_token(db, token)
    assert info is not None
    assert info.role is Role.OPS
    assert _run(db, ["token", "list"]) == 0
    listing = capsys.readouterr().out
    assert "prometheus" in listing
    assert token not in listing
    assert _run(db, ["token", "revoke", "prometheus"]) == 0
    assert accounts.verify_token(db, token) is None
    entries = audit_after(db, mark)
    assert [e.action for e in entries] == ["token_create", "token_revoke"]
    assert all(e.actor.startswith("cli:") and e.actor_kind == "cli" for e in entries)


def test_no_password_token_or_session_secret_in_any_log_line(
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # DEBUG everywhere, SQLAlchemy's statement and parameter logging included.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    monkeypatch.setattr(accounts_cli, "Passwords", cheap_passwords)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert _run(db, ["user", "add", "nia", "--role", "radiologist"]) == 0
    wrong = "a wrong password for nia"
    assert not _sign_in(db, "nia", wrong).ok
    signed = _sign_in(db, "nia", PASSWORD)
    assert signed.session is not None
    assert accounts.get_session(db, signed.session.secret, policy=POLICY) is not None
    accounts.end_session(db, signed.session.secret)
    assert _run(db, ["token", "create", "ris", "--role", "radiologist"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert accounts.verify_token(db, token) is not None

    secrets_ = [PASSWORD, wrong, token, signed.session.secret, signed.session.csrf_token]
    lines = [r.getMessage() + " " + repr(r.args) + " " + repr(vars(r)) for r in caplog.records]
    assert any("INSERT INTO users" in line for line in lines), "SQL logging was not captured"
    assert any("user added: nia" in line for line in lines)
    for line in lines:
        for secret in secrets_:
            assert secret not in line
