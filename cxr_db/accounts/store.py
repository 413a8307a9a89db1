"""Users, sign-in, browser sessions and API tokens. Each function is one transaction, and
each change is audited in that same transaction.

Secrets never rest in plain text: passwords as argon2id hashes (``cxr_common.passwords``),
API tokens and session secrets as sha256 (they are 256-bit random, so a fast hash is
enough), and a session's CSRF token is derived from its secret by HMAC, never stored.
Nothing here logs or puts into an audit row a password, a token, a session secret or the
name typed at a failed sign-in for an unknown user.

Times default to the database's ``now()``; functions take ``now=`` so that callers (and
tests) can evaluate timeouts at a given instant without waiting.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from cxr_common.passwords import Passwords, check_password_policy
from cxr_db.accounts.tables import ApiToken, Role, SignInLock, User, WebSession
from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.errors import (
    InvalidNameError,
    TokenExistsError,
    UnknownTokenError,
    UnknownUserError,
    UserExistsError,
    WrongPasswordError,
)
from cxr_db.reading.tables import ReadState, StudyRead

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_PREFIX = "cxr_"
_MAX_SECRET_LENGTH = 256
_CSRF_CONTEXT = b"cxr-triage csrf v1"
_TOKEN_TOUCH_EVERY = timedelta(minutes=1)


def validate_name(name: str, what: str = "name") -> str:
    """A user or token name: 1-64 of ``A-Z a-z 0-9 . _ @ -``, starting with a letter or digit."""
    if not _NAME.match(name):
        raise InvalidNameError(
            f"{what} must be 1-64 characters of letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _db_now(conn: Connection, now: datetime | None) -> datetime:
    if now is not None:
        return now
    value: datetime = conn.execute(select(func.now())).scalar_one()
    return value


# ---------------------------------------------------------------------------- users


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: Role
    disabled: bool
    failed_logins: int  # wrong passwords in a row, summed over client addresses
    locked_until: datetime | None  # the latest lock-out from any one client address
    created_at: datetime
    last_login_at: datetime | None

    def actor(self, client_addr: str | None = None) -> Actor:
        return Actor(self.username, ActorKind.USER, client_addr)

    def as_json(self) -> dict[str, object]:
        return {
            "username": self.username,
            "role": self.role.value,
            "disabled": self.disabled,
            "locked_until": self.locked_until.isoformat() if self.locked_until else None,
            "created_at": self.created_at.isoformat(),
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


#: Summed over client addresses: consecutive wrong passwords, and the latest lock-out
#: (an account is locked per (account, client address): ``sign_in_locks``).
_FAILED_LOGINS = (
    select(func.coalesce(func.sum(SignInLock.failures), 0))
    .where(SignInLock.user_id == User.id)
    .correlate(User)
    .scalar_subquery()
    .label("failed_logins")
)
_LOCKED_UNTIL = (
    select(func.max(SignInLock.locked_until))
    .where(SignInLock.user_id == User.id)
    .correlate(User)
    .scalar_subquery()
    .label("locked_until")
)
_USER_COLUMNS = (
    User.id,
    User.username,
    User.role,
    User.disabled,
    _FAILED_LOGINS,
    _LOCKED_UNTIL,
    User.created_at,
    User.last_login_at,
)


def _user(row: Any) -> UserInfo:
    return UserInfo(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        disabled=row.disabled,
        failed_logins=row.failed_logins,
        locked_until=row.locked_until,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


#: Roles a person signs in with; ``sender`` (a modality or PACS storing by STOW-RS) is a
#: token role only.
USER_ROLES = frozenset({Role.RADIOLOGIST, Role.ADMIN, Role.OPS})


def add_user(
    engine: Engine,
    username: str,
    password: str,
    role: Role,
    *,
    passwords: Passwords,
    actor: Actor,
) -> UserInfo:
    """Create a user with an argon2id password hash. Raises ``WeakPasswordError``,
    ``InvalidNameError`` or ``UserExistsError`` (names are unique regardless of case)."""
    validate_name(username, "user name")
    role = Role(role)
    if role not in USER_ROLES:
        raise ValueError(f"role {role.value} is for API tokens only (cxr-triage token create)")
    check_password_policy(password)
    password_hash = passwords.hash(password)
    try:
        with engine.begin() as conn:
            row = conn.execute(
                insert(User)
                .values(username=username, role=role.value, password_hash=password_hash)
                .returning(*_USER_COLUMNS)
            ).one()
            audit.append(
                conn,
                AuditEvent(AuditAction.USER_ADD, actor, username, {"role": role.value}),
            )
    except IntegrityError as exc:
        raise UserExistsError(f"user {username} already exists") from exc
    log.info("user added: %s (%s)", username, role.value)
    return _user(row)


def get_user(engine: Engine, username: str) -> UserInfo | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_USER_COLUMNS).where(func.lower(User.username) == username.lower())
        ).one_or_none()
    return _user(row) if row is not None else None


def list_users(engine: Engine) -> list[UserInfo]:
    with engine.connect() as conn:
        rows = conn.execute(select(*_USER_COLUMNS).order_by(func.lower(User.username))).all()
    return [_user(r) for r in rows]


def disable_user(engine: Engine, username: str, *, actor: Actor) -> UserInfo:
    """Disable a user: their sessions end and their open claims are released at once."""
    with engine.begin() as conn:
        row = conn.execute(
            update(User)
            .where(func.lower(User.username) == username.lower())
            .values(disabled=True)
            .returning(*_USER_COLUMNS)
        ).one_or_none()
        if row is None:
            raise UnknownUserError(f"no user named {username}")
        sessions = conn.execute(delete(WebSession).where(WebSession.user_id == row.id)).rowcount
        claims = conn.execute(
            update(StudyRead)
            .where(StudyRead.state == ReadState.IN_PROGRESS.value, StudyRead.claimed_by == row.id)
            .values(
                state=ReadState.UNREAD.value,
                claimed_by=None,
                claimed_at=None,
                claim_expires_at=None,
                updated_at=func.now(),
            )
        ).rowcount
        audit.append(
            conn,
            AuditEvent(
                AuditAction.USER_DISABLE,
                actor,
                row.username,
                {"sessions_ended": sessions, "claims_released": claims},
            ),
        )
    log.info("user disabled: %s", row.username)
    return _user(row)


# -------------------------------------------------------------------- sign-in, sessions


@dataclass(frozen=True)
class SignInPolicy:
    max_failures: int = 5  # consecutive wrong passwords before a lock-out
    lockout: timedelta = timedelta(minutes=15)
    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=12)


class SignInOutcome(enum.StrEnum):
    OK = "ok"
    BAD_CREDENTIALS = "bad_credentials"  # unknown user or wrong password
    LOCKED = "locked"
    DISABLED = "disabled"


@dataclass(frozen=True)
class NewSession:
    """A session just created. ``secret`` goes into the cookie and nowhere else."""

    secret: str
    csrf_token: str
    expires_at: datetime
    user: UserInfo


@dataclass(frozen=True)
class SignInResult:
    outcome: SignInOutcome
    user: UserInfo | None
    session: NewSession | None = None
    locked_until: datetime | None = None  # LOCKED: for this client address until then

    @property
    def ok(self) -> bool:
        return self.outcome is SignInOutcome.OK


@dataclass(frozen=True)
class SessionInfo:
    user: UserInfo
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    client_addr: str | None


def csrf_token_for(session_secret: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 of a fixed context under the secret."""
    mac = hmac.new(session_secret.encode("utf-8"), _CSRF_CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def csrf_matches(session_secret: str, submitted: str | None) -> bool:
    """Constant-time check of a submitted CSRF token against the session's."""
    if not submitted:
        return False
    return hmac.compare_digest(csrf_token_for(session_secret), submitted)


def _insert_session(
    conn: Connection,
    user: UserInfo,
    client_addr: str | None,
    policy: SignInPolicy,
    now: datetime,
) -> NewSession:
    secret = secrets.token_urlsafe(32)
    expires_at = now + policy.absolute_timeout
    conn.execute(
        insert(WebSession).values(
            id=_sha256(secret),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
            client_addr=client_addr[:64] if client_addr else None,
        )
    )
    return NewSession(secret, csrf_token_for(secret), expires_at, user)


def _lock_key(client_addr: str | None) -> str:
    """The client address a lock-out is kept for ('' when the server saw none)."""
    return (client_addr or "")[:64]


def sign_in(
    engine: Engine,
    username: str,
    password: str,
    *,
    passwords: Passwords,
    policy: SignInPolicy,
    client_addr: str | None = None,
    now: datetime | None = None,
) -> SignInResult:
    """Check a user name and password; on success start a session.

    Every attempt is audited. ``policy.max_failures`` wrong passwords in a row **from one
    client address** lock the account **for that address** for ``policy.lockout``
    (``sign_in_locks``); while locked there, even the right password is refused from
    there, without spending a hash, but the real user signing in from elsewhere is not
    affected. ``unlock_user`` lifts every lock-out of an account. An unknown user costs
    the same argon2 work as a known one. The password is hashed with no database
    connection held (``Passwords`` bounds how many hashes run at once and raises
    ``PasswordsBusyError`` when none is free in time). A hash made with older parameters
    is replaced on success. The caller shows one message for every failure.
    """
    addr = _lock_key(client_addr)
    with engine.connect() as conn:
        at = _db_now(conn, now)
        row = conn.execute(
            select(*_USER_COLUMNS, User.password_hash).where(
                func.lower(User.username) == username.lower()
            )
        ).one_or_none()
        lock = (
            conn.execute(
                select(SignInLock.failures, SignInLock.locked_until).where(
                    SignInLock.user_id == row.id, SignInLock.client_addr == addr
                )
            ).one_or_none()
            if row is not None
            else None
        )
        conn.rollback()
    if row is None:
        passwords.burn(password)
        audit.record(
            engine,
            AuditEvent(
                AuditAction.SIGN_IN_FAILED,
                Actor.anonymous(client_addr),
                None,
                {"reason": "unknown_user"},
            ),
        )
        return SignInResult(SignInOutcome.BAD_CREDENTIALS, None)
    user = _user(row)
    actor = user.actor(client_addr)
    if lock is not None and lock.locked_until is not None and lock.locked_until > at:
        audit.record(
            engine,
            AuditEvent(
                AuditAction.SIGN_IN_FAILED,
                actor,
                user.username,
                {"reason": SignInOutcome.LOCKED.value},
            ),
        )
        return SignInResult(SignInOutcome.LOCKED, user, locked_until=lock.locked_until)
    if user.disabled:
        passwords.burn(password)
        audit.record(
            engine,
            AuditEvent(
                AuditAction.SIGN_IN_FAILED,
                actor,
                user.username,
                {"reason": SignInOutcome.DISABLED.value},
            ),
        )
        return SignInResult(SignInOutcome.DISABLED, user)
    if not passwords.verify(row.password_hash, password):
        return _sign_in_failed(engine, user, actor, addr, policy, at)
    new_hash = passwords.hash(password) if passwords.needs_rehash(row.password_hash) else None
    with engine.begin() as conn:
        values: dict[str, object] = {"last_login_at": at}
        if new_hash is not None:
            values["password_hash"] = new_hash
        conn.execute(
            delete(SignInLock).where(SignInLock.user_id == user.id, SignInLock.client_addr == addr)
        )
        signed_in = _user(
            conn.execute(
                update(User).where(User.id == user.id).values(**values).returning(*_USER_COLUMNS)
            ).one()
        )
        session = _insert_session(conn, signed_in, client_addr, policy, at)
        audit.append(
            conn,
            AuditEvent(
                AuditAction.SIGN_IN,
                actor,
                user.username,
                {"rehashed": new_hash is not None},
            ),
        )
    return SignInResult(SignInOutcome.OK, signed_in, session)


def _sign_in_failed(
    engine: Engine,
    user: UserInfo,
    actor: Actor,
    addr: str,
    policy: SignInPolicy,
    at: datetime,
) -> SignInResult:
    """Count a wrong password from ``addr``; lock the account there at ``max_failures``."""
    with engine.begin() as conn:
        # one row per (account, address), counted atomically: parallel attempts each count.
        # A lock-out in force stays as it is (attempts that checked before it began end
        # here); an expired one starts the count again.
        active = SignInLock.locked_until > at
        row = conn.execute(
            pg_insert(SignInLock)
            .values(user_id=user.id, client_addr=addr, failures=1, updated_at=at)
            .on_conflict_do_update(
                index_elements=[SignInLock.user_id, SignInLock.client_addr],
                set_={
                    "failures": case(
                        (active, SignInLock.failures),
                        (SignInLock.locked_until.is_not(None), 1),
                        else_=SignInLock.failures + 1,
                    ),
                    "locked_until": case((active, SignInLock.locked_until), else_=None),
                    "updated_at": at,
                },
            )
            .returning(SignInLock.failures, SignInLock.locked_until)
        ).one()
        failures = int(row.failures)
        if row.locked_until is not None:
            audit.append(
                conn,
                AuditEvent(
                    AuditAction.SIGN_IN_FAILED,
                    actor,
                    user.username,
                    {"reason": SignInOutcome.LOCKED.value},
                ),
            )
            return SignInResult(SignInOutcome.LOCKED, user, locked_until=row.locked_until)
        locked_until = at + policy.lockout if failures >= policy.max_failures else None
        if locked_until is not None:
            conn.execute(
                update(SignInLock)
                .where(SignInLock.user_id == user.id, SignInLock.client_addr == addr)
                .values(failures=0, locked_until=locked_until)
            )
        audit.append(
            conn,
            AuditEvent(
                AuditAction.SIGN_IN_FAILED,
                actor,
                user.username,
                {"reason": "bad_password", "failures": failures},
            ),
        )
        if locked_until is not None:
            audit.append(
                conn,
                AuditEvent(
                    AuditAction.ACCOUNT_LOCKED,
                    actor,
                    user.username,
                    {
                        "failures": failures,
                        "locked_until": locked_until.isoformat(),
                        "per_client_addr": True,
                    },
                ),
            )
    if locked_until is not None:
        log.warning(
            "account locked for one client address after %d failed sign-ins: %s",
            failures,
            user.username,
        )
        return SignInResult(SignInOutcome.LOCKED, user, locked_until=locked_until)
    return SignInResult(SignInOutcome.BAD_CREDENTIALS, user)


def unlock_user(engine: Engine, username: str, *, actor: Actor) -> int:
    """Lift every lock-out (and failure count) of a user, from every client address;
    returns how many addresses were locked. Audited. ``UnknownUserError`` if no such user."""
    with engine.begin() as conn:
        at = _db_now(conn, None)
        row = conn.execute(
            select(User.id, User.username).where(func.lower(User.username) == username.lower())
        ).one_or_none()
        if row is None:
            raise UnknownUserError(f"no user named {username}")
        locked = conn.execute(
            select(func.count()).where(SignInLock.user_id == row.id, SignInLock.locked_until > at)
        ).scalar_one()
        conn.execute(delete(SignInLock).where(SignInLock.user_id == row.id))
        audit.append(
            conn,
            AuditEvent(
                AuditAction.ACCOUNT_UNLOCK, actor, row.username, {"addresses_locked": int(locked)}
            ),
        )
    log.info("user unlocked: %s", row.username)
    return int(locked)


def change_password(
    engine: Engine,
    username: str,
    new_password: str,
    *,
    passwords: Passwords,
    actor: Actor,
    current_password: str | None = None,
    keep_session: str | None = None,
) -> UserInfo:
    """Set a user's password and end their sessions (all but ``keep_session``, the secret
    of the session asking), audited. With ``current_password`` (the web page), that must be
    the user's present password, else ``WrongPasswordError``; the command line, an
    operator's tool, passes none. ``WeakPasswordError`` for a new password that breaks the
    policy; ``UnknownUserError`` if no such enabled user. Hashing holds no connection."""
    check_password_policy(new_password)
    with engine.connect() as conn:
        row = conn.execute(
            select(User.id, User.password_hash).where(
                func.lower(User.username) == username.lower(), User.disabled.is_(False)
            )
        ).one_or_none()
        conn.rollback()
    if row is None:
        raise UnknownUserError(f"no enabled user named {username}")
    if current_password is not None and not passwords.verify(row.password_hash, current_password):
        audit.record(
            engine,
            AuditEvent(
                AuditAction.PASSWORD_CHANGE_FAILED, actor, username, {"reason": "wrong_password"}
            ),
        )
        raise WrongPasswordError("the current password is wrong")
    new_hash = passwords.hash(new_password)
    keep = _sha256(keep_session) if keep_session else ""
    with engine.begin() as conn:
        updated = conn.execute(
            update(User)
            .where(User.id == row.id, User.password_hash == row.password_hash)
            .values(password_hash=new_hash)
            .returning(*_USER_COLUMNS)
        ).one_or_none()
        if updated is None:
            raise WrongPasswordError("the password changed meanwhile: try again")
        ended = conn.execute(
            delete(WebSession).where(WebSession.user_id == row.id, WebSession.id != keep)
        ).rowcount
        conn.execute(delete(SignInLock).where(SignInLock.user_id == row.id))
        audit.append(
            conn,
            AuditEvent(
                AuditAction.PASSWORD_CHANGE,
                actor,
                updated.username,
                {"sessions_ended": int(ended), "current_password_checked": bool(current_password)},
            ),
        )
    log.info("password changed: %s", updated.username)
    return _user(updated)


def create_session(
    engine: Engine,
    username: str,
    *,
    policy: SignInPolicy,
    client_addr: str | None = None,
    now: datetime | None = None,
) -> NewSession:
    """Start a session for an enabled user without a password check (callers that have
    authenticated the user another way). ``sign_in`` is the usual way in."""
    with engine.begin() as conn:
        at = _db_now(conn, now)
        row = conn.execute(
            select(*_USER_COLUMNS).where(
                func.lower(User.username) == username.lower(), User.disabled.is_(False)
            )
        ).one_or_none()
        if row is None:
            raise UnknownUserError(f"no enabled user named {username}")
        return _insert_session(conn, _user(row), client_addr, policy, at)


def get_session(
    engine: Engine,
    secret: str | None,
    *,
    policy: SignInPolicy,
    now: datetime | None = None,
    touch: bool = True,
) -> SessionInfo | None:
    """The live session for a cookie's secret, touched; None when there is none.

    ``touch=False`` reads it without counting as activity (a page's background refresh):
    its idle timeout runs on from the last real request.

    A session idle for ``policy.idle_timeout``, past its absolute expiry, or whose user
    was disabled is deleted here (and audited as expired): it cannot come back.
    """
    if not secret or len(secret) > _MAX_SECRET_LENGTH:
        return None
    wanted = _sha256(secret)
    with engine.begin() as conn:
        at = _db_now(conn, now)
        row = conn.execute(
            select(
                WebSession.id.label("session_id"),
                WebSession.created_at.label("session_created_at"),
                WebSession.last_seen_at,
                WebSession.expires_at,
                WebSession.client_addr,
                *_USER_COLUMNS,
            )
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id == wanted)
        ).one_or_none()
        if row is None or not hmac.compare_digest(row.session_id, wanted):
            return None
        reason = None
        if row.disabled:
            reason = "user_disabled"
        elif row.expires_at <= at:
            reason = "absolute_timeout"
        elif row.last_seen_at + policy.idle_timeout <= at:
            reason = "idle_timeout"
        if reason is not None:
            conn.execute(delete(WebSession).where(WebSession.id == wanted))
            audit.append(
                conn,
                AuditEvent(
                    AuditAction.SESSION_EXPIRED,
                    Actor(row.username, ActorKind.USER, row.client_addr),
                    row.username,
                    {"reason": reason},
                ),
            )
            return None
        if touch:
            conn.execute(
                update(WebSession)
                .where(WebSession.id == wanted, WebSession.last_seen_at < at)
                .values(last_seen_at=at)
            )
    return SessionInfo(
        user=_user(row),
        csrf_token=csrf_token_for(secret),
        created_at=row.session_created_at,
        last_seen_at=max(at, row.last_seen_at) if touch else row.last_seen_at,
        expires_at=row.expires_at,
        client_addr=row.client_addr,
    )


def end_session(engine: Engine, secret: str | None, *, client_addr: str | None = None) -> bool:
    """Sign out: delete the session (audited). False when there was none."""
    if not secret or len(secret) > _MAX_SECRET_LENGTH:
        return False
    with engine.begin() as conn:
        row = conn.execute(
            delete(WebSession).where(WebSession.id == _sha256(secret)).returning(WebSession.user_id)
        ).one_or_none()
        if row is None:
            return False
        username = conn.execute(select(User.username).where(User.id == row.user_id)).scalar_one()
        audit.append(
            conn,
            AuditEvent(
                AuditAction.SIGN_OUT, Actor(username, ActorKind.USER, client_addr), username
            ),
        )
    return True


def purge_expired_sessions(
    engine: Engine, *, policy: SignInPolicy, now: datetime | None = None
) -> int:
    """Delete sessions past their absolute expiry or idle timeout; returns how many."""
    with engine.begin() as conn:
        at = _db_now(conn, now)
        result = conn.execute(
            delete(WebSession).where(
                or_(
                    WebSession.expires_at <= at,
                    WebSession.last_seen_at <= at - policy.idle_timeout,
                )
            )
        )
    return int(result.rowcount)


# ---------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    expires_at: datetime | None = None  # None: until revoked

    def actor(self, client_addr: str | None = None) -> Actor:
        return Actor(self.name, ActorKind.TOKEN, client_addr)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role.value,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@dataclass(frozen=True)
class CreatedToken:
    """A new token. ``token`` is shown once and stored only as its sha256."""

    token: str
    info: TokenInfo


_TOKEN_COLUMNS = (
    ApiToken.id,
    ApiToken.name,
    ApiToken.role,
    ApiToken.created_by,
    ApiToken.created_at,
    ApiToken.revoked_at,
    ApiToken.last_used_at,
    ApiToken.expires_at,
)


def _token(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
    )


def create_token(
    engine: Engine,
    name: str,
    role: Role,
    *,
    actor: Actor,
    lifetime: timedelta | None = None,
) -> CreatedToken:
    """Create an API token: ``cxr_`` + 32 random bytes, URL-safe, valid for ``lifetime``
    (None: until revoked); ``verify_token`` refuses it afterwards. Raises
    ``TokenExistsError`` when an active (unrevoked) token has that name."""
    validate_name(name, "token name")
    role = Role(role)
    if lifetime is not None and lifetime <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            expires_at = _db_now(conn, None) + lifetime if lifetime is not None else None
            row = conn.execute(
                insert(ApiToken)
                .values(
                    name=name,
                    role=role.value,
                    token_hash=_sha256(token),
                    created_by=actor.name[:128],
                    expires_at=expires_at,
                )
                .returning(*_TOKEN_COLUMNS)
            ).one()
            audit.append(
                conn,
                AuditEvent(
                    AuditAction.TOKEN_CREATE,
                    actor,
                    name,
                    {
                        "role": role.value,
                        "expires_at": expires_at.isoformat() if expires_at else None,
                    },
                ),
            )
    except IntegrityError as exc:
        raise TokenExistsError(f"an active token named {name} already exists") from exc
    log.info("token created: %s (%s)", name, role.value)
    return CreatedToken(token, _token(row))


def verify_token(
    engine: Engine, token: str | None, *, now: datetime | None = None
) -> TokenInfo | None:
    """The active token matching a bearer credential; None for unknown, revoked or expired
    ones (expiry is checked here, on the server, at every request)."""
    if not token or len(token) > _MAX_SECRET_LENGTH:
        return None
    wanted = _sha256(token)
    with engine.begin() as conn:
        at = _db_now(conn, now)
        row = conn.execute(
            select(*_TOKEN_COLUMNS, ApiToken.token_hash).where(
                ApiToken.token_hash == wanted, ApiToken.revoked_at.is_(None)
            )
        ).one_or_none()
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        if row.expires_at is not None and row.expires_at <= at:
            return None
        conn.execute(
            update(ApiToken)
            .where(
                ApiToken.id == row.id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at < at - _TOKEN_TOUCH_EVERY,
                ),
            )
            .values(last_used_at=at)
        )
    return _token(row)


def revoke_token(engine: Engine, name: str, *, actor: Actor) -> TokenInfo:
    """Revoke the active token of that name; it stops working at once."""
    with engine.begin() as conn:
        row = conn.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(*_TOKEN_COLUMNS)
        ).one_or_none()
        if row is None:
            raise UnknownTokenError(f"no active token named {name}")
        audit.append(conn, AuditEvent(AuditAction.TOKEN_REVOKE, actor, name))
    log.info("token revoked: %s", name)
    return _token(row)


def list_tokens(engine: Engine, *, include_revoked: bool = False) -> list[TokenInfo]:
    stmt = select(*_TOKEN_COLUMNS).order_by(ApiToken.name, ApiToken.id)
    if not include_revoked:
        stmt = stmt.where(ApiToken.revoked_at.is_(None))
    with engine.connect() as conn:
        return [_token(r) for r in conn.execute(stmt)]
