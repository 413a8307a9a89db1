"""The audit domain's table, ``audit_log`` (revision ``0002_reading_workflow``): append-only,
Postgres refuses UPDATE, DELETE and TRUNCATE. The audit detail never holds patient data.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class ActorKind(enum.StrEnum):
    USER = "user"  # a signed-in person (web)
    TOKEN = "token"  # an API token, by its name
    CLI = "cli"  # an operator at the command line
    ANONYMOUS = "anonymous"  # a failed sign-in for an unknown user name
    SYSTEM = "system"  # a role acting on its own: the scheduler, the results sender (0012)


class AuditAction(enum.StrEnum):
    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    ACCOUNT_LOCKED = "account_locked"  # for one client address (revision 0017)
    ACCOUNT_UNLOCK = "account_unlock"
    PASSWORD_CHANGE = "password_change"
    PASSWORD_CHANGE_FAILED = "password_change_failed"
    REQUEST_REFUSED = "request_refused"  # 401, 403, CSRF, Host, throttled (rate-limited)
    WORKLIST_VIEW = "worklist_view"  # the page, the JSON API, the command line
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
    # the model registry and the validated population (cxr_db.registry, revision 0006)
    MODEL_REGISTER = "model_register"
    MODEL_ACTIVATE = "model_activate"
    MODEL_SHADOW = "model_shadow"
    MODEL_RETIRE = "model_retire"
    MODEL_ROLLBACK = "model_rollback"
    MODEL_CALIBRATE = "model_calibrate"  # site calibration from shadow answers (revision 0010)
    POPULATION_ENABLE = "population_enable"
    POPULATION_DISABLE = "population_disable"
    # escalation of flagged studies left unread (cxr_db.escalations, revision 0012)
    ESCALATION = "escalation"
    ESCALATION_DELIVERY = "escalation_delivery"


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
