"""ORM description of the reading-workflow tables (revision ``0002_reading_workflow``).

    users 1─* web_sessions          server-side sessions: sign-out and timeouts end them
    users 1─* answers *─1 studies   what a radiologist answered, with the model output seen
    studies 1─1 study_reads         read state per study (no row = unread)
    api_tokens                      bearer tokens for scripts, stored as sha256
    audit_log                       append-only: Postgres refuses UPDATE, DELETE, TRUNCATE

Every closed vocabulary (role, read state, finding, audit action, actor kind) is a
``StrEnum`` defined here once; the migration builds its CHECK constraints from the same
values. Nothing here holds a password, a token or a session secret in plain text, and the
audit detail never holds patient data.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.schema import Base


class Role(enum.StrEnum):
    """What a signed-in user or a token may do."""

    RADIOLOGIST = "radiologist"  # reads and answers
    ADMIN = "admin"  # users, audit, settings
    OPS = "ops"  # health and metrics only


class ReadState(enum.StrEnum):
    UNREAD = "unread"
    IN_PROGRESS = "in_progress"  # claimed by a user until the claim expires
    READ = "read"


class Finding(enum.StrEnum):
    """A radiologist's answer for a study."""

    PNEUMONIA = "pneumonia"
    NO_PNEUMONIA = "no_pneumonia"
    OTHER = "other"


class ActorKind(enum.StrEnum):
    USER = "user"  # a signed-in person (web)
    TOKEN = "token"  # an API token, by its name
    CLI = "cli"  # an operator at the command line
    ANONYMOUS = "anonymous"  # a failed sign-in for an unknown user name


class AuditAction(enum.StrEnum):
    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    ACCOUNT_LOCKED = "account_locked"
    SIGN_OUT = "sign_out"
    SESSION_EXPIRED = "session_expired"
    STUDY_VIEW = "study_view"
    HEATMAP_FETCH = "heatmap_fetch"
    IMAGE_FETCH = "image_fetch"  # the plain radiograph
    STUDY_CLAIM = "study_claim"
    STUDY_RELEASE = "study_release"
    ANSWER = "answer"
    USER_ADD = "user_add"
    USER_DISABLE = "user_disable"
    TOKEN_CREATE = "token_create"
    TOKEN_REVOKE = "token_revoke"
    AUDIT_VIEW = "audit_view"
    AUDIT_EXPORT = "audit_export"
    ANSWERS_EXPORT = "answers_export"
    # the model registry and the validated population (cxr_db.models, revision 0006)
    MODEL_REGISTER = "model_register"
    MODEL_ACTIVATE = "model_activate"
    MODEL_SHADOW = "model_shadow"
    MODEL_RETIRE = "model_retire"
    MODEL_ROLLBACK = "model_rollback"
    MODEL_CALIBRATE = "model_calibrate"  # site calibration from shadow answers (revision 0010)
    POPULATION_ENABLE = "population_enable"
    POPULATION_DISABLE = "population_disable"


def check_in(column: str, values: type[enum.StrEnum]) -> str:
    """``column IN ('a', 'b')`` for a CHECK constraint over a StrEnum's values."""
    return f"{column} IN (" + ", ".join(f"'{v.value}'" for v in values) + ")"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(check_in("role", Role), name="users_role_valid"),
        CheckConstraint("failed_logins >= 0", name="users_failed_logins_nonnegative"),
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
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


class StudyRead(Base):
    """Read state of one study. A study without a row is unread; an ``in_progress`` row
    whose ``claim_expires_at`` has passed counts as unread (anyone may claim it)."""

    __tablename__ = "study_reads"
    __table_args__ = (
        CheckConstraint(check_in("state", ReadState), name="study_reads_state_valid"),
        CheckConstraint(
            "state <> 'in_progress' OR (claimed_by IS NOT NULL AND claim_expires_at IS NOT NULL)",
            name="study_reads_claim_complete",
        ),
        CheckConstraint(
            "state <> 'read' OR (read_at IS NOT NULL AND num_nonnulls(read_by, read_by_token) = 1)",
            name="study_reads_read_complete",
        ),
        Index("ix_study_reads_state", "state"),
    )

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16), default=ReadState.UNREAD.value)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    read_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    read_by_token: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Answer(Base):
    """One answer: by a signed-in user or, through the API, by a token (exactly one)."""

    __tablename__ = "answers"
    __table_args__ = (
        CheckConstraint(check_in("finding", Finding), name="answers_finding_valid"),
        CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="answers_score_range"),
        CheckConstraint("num_nonnulls(user_id, token_id) = 1", name="answers_one_reader"),
        Index("ix_answers_study_created", "study_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    finding: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditEntry(Base):
    """One audit event. Append-only: triggers created by the migration refuse UPDATE,
    DELETE and TRUNCATE, for every database role including the table's owner."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(check_in("actor_kind", ActorKind), name="audit_log_actor_kind_valid"),
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_at", "actor", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_target", "target"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    actor_kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(200))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
