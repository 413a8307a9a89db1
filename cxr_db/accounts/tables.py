"""The accounts domain's tables (revision ``0002_reading_workflow``).

    users 1─* web_sessions          server-side sessions: sign-out and timeouts end them
    users 1─* sign_in_locks         wrong passwords per (account, client address) (0017)
    api_tokens                      bearer tokens for scripts, stored as sha256, may expire

Nothing here holds a password, a token or a session secret in plain text; the migration
builds its CHECK constraints from the same ``Role`` values.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class Role(enum.StrEnum):
    """What a signed-in user or a token may do."""

    RADIOLOGIST = "radiologist"  # reads and answers
    ADMIN = "admin"  # users, audit, settings
    OPS = "ops"  # health and metrics only
    SENDER = "sender"  # stores instances by STOW-RS and reads nothing (API tokens only)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(check_in("role", Role), name="users_role_valid"),
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint(check_in("role", Role), name="api_tokens_role_valid"),
        Index(
            "uq_api_tokens_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: never


class SignInLock(Base):
    """Consecutive wrong passwords for one account from one client address (revision 0017).
    ``max_failures`` of them lock the account *for that address* until ``locked_until``,
    so a flood from one place cannot lock the real user out everywhere."""

    __tablename__ = "sign_in_locks"
    __table_args__ = (
        CheckConstraint("failures >= 0", name="sign_in_locks_failures_nonnegative"),
        Index("ix_sign_in_locks_locked_until", "locked_until"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    client_addr: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebSession(Base):
    """A browser session. ``id`` is the sha256 of the cookie's secret; the CSRF token is
    derived from that secret (HMAC), so neither is stored in a form that could be replayed."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    client_addr: Mapped[str | None] = mapped_column(String(64))
