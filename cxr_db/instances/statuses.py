"""Every instance and study status, defined once: the vocabulary, the column type, the
study-status precedence (and the one SQL expression that applies it) and the labels the
CLI and the web page show.

An instance moves received → queued → processing → done | not_eligible | failed. A study
has the status of its instances, taken in ``STUDY_STATUS_PRECEDENCE`` order: while any
image is still moving the study is pending; once all are final, one scored image makes
the study scored; a failure outranks a mere "not eligible".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Enum, SQLColumnExpression, case, func, literal, type_coerce

from cxr_db.base import check_in, enum_values


class InstanceStatus(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    NOT_ELIGIBLE = "not_eligible"
    FAILED = "failed"


PENDING_STATUSES = (InstanceStatus.RECEIVED, InstanceStatus.QUEUED, InstanceStatus.PROCESSING)
FINAL_STATUSES = (InstanceStatus.DONE, InstanceStatus.NOT_ELIGIBLE, InstanceStatus.FAILED)
REASON_STATUSES = (InstanceStatus.FAILED, InstanceStatus.NOT_ELIGIBLE)
"""Statuses that carry a reason a person can act on (the image still needs a human read)."""

STUDY_STATUS_PRECEDENCE: tuple[InstanceStatus, ...] = (
    InstanceStatus.PROCESSING,
    InstanceStatus.QUEUED,
    InstanceStatus.RECEIVED,
    InstanceStatus.DONE,
    InstanceStatus.FAILED,
    InstanceStatus.NOT_ELIGIBLE,
)
"""A study's status is the first of these that any of its instances has."""

STATUS_LABELS: Mapping[InstanceStatus, str] = {
    InstanceStatus.RECEIVED: "received",
    InstanceStatus.QUEUED: "queued",
    InstanceStatus.PROCESSING: "processing",
    InstanceStatus.DONE: "scored",
    InstanceStatus.NOT_ELIGIBLE: "NOT ELIGIBLE",
    InstanceStatus.FAILED: "FAILED",
}
"""What a person reads for each status, on the web page and in the CLI table alike."""


STATUS_TYPE: Enum = Enum(
    InstanceStatus,
    native_enum=False,
    values_callable=enum_values,
    length=16,
    create_constraint=False,  # the named check constraint in ``tables`` (and Alembic 0001)
    validate_strings=True,
    name="instance_status",
)
"""The column type: varchar(16) in the database, ``InstanceStatus`` in Python; a value
outside the enum is refused before it reaches the database."""

STATUS_CHECK_SQL = check_in("status", InstanceStatus)


@dataclass(frozen=True)
class StatusReason:
    """Why one instance of a study is failed or not eligible (``reason`` as recorded)."""

    status: InstanceStatus
    reason: str | None


def study_status_of(status: SQLColumnExpression[InstanceStatus]) -> ColumnElement[str]:
    """The aggregate SQL expression for a study's status over its instances' ``status``
    column (use it in a query grouped by study); rows carry an ``InstanceStatus``."""
    *first, last = STUDY_STATUS_PRECEDENCE
    expr = case(
        *((func.bool_or(status == s), literal(s.value)) for s in first),
        else_=literal(last.value),
    )
    return type_coerce(expr, STATUS_TYPE)
