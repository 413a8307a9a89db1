"""HL7 sends in the database: the lock, the check, the attempt, and what pages show.

Delivery is idempotent per (study, result version, destination), as for DICOM results
(``cxr_db.results.store``): the sender holds :func:`send_lock` (a transaction-scoped
advisory lock) while it checks :func:`already_accepted`, sends, and
:func:`record_attempt`; a partial unique index refuses a second ``accepted`` row as the
last line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.dialects.postgresql import distinct_on

from cxr_db import sends
from cxr_db.hl7.tables import Hl7Send, Hl7SendStatus

__all__ = [
    "Hl7Attempt",
    "Hl7Outcome",
    "already_accepted",
    "last_accepted_version",
    "newest_attempts",
    "record_attempt",
    "send_lock",
]


@contextmanager
def send_lock(
    engine: Engine, study_id: int, result_version: int, destination: str
) -> Iterator[Connection | None]:
    """The advisory lock of (study, version, HL7 destination) (``cxr_db.sends``)."""
    with sends.send_lock(engine, "cxr-hl7", study_id, result_version, destination) as conn:
        yield conn


def already_accepted(
    conn: Connection, study_id: int, result_version: int, destination: str
) -> bool:
    """True when ``destination`` accepted (AA) this result version already."""
    return sends.delivered(
        conn, Hl7Send, Hl7SendStatus.ACCEPTED.value, study_id, result_version, destination
    )


def last_accepted_version(
    conn: Connection, study_id: int, destination: str, before_version: int
) -> int | None:
    """The newest result version below ``before_version`` that ``destination`` accepted."""
    return sends.last_delivered_version(
        conn, Hl7Send, Hl7SendStatus.ACCEPTED.value, study_id, destination, before_version
    )


@dataclass(frozen=True)
class Hl7Attempt:
    """One delivery attempt as the results sender records it."""

    study_id: int
    result_version: int
    destination: str
    status: Hl7SendStatus
    message_control_id: str
    ack_code: str | None
    error: str | None


def record_attempt(conn: Connection, attempt: Hl7Attempt) -> int:
    """Insert the attempt (numbered 1, 2, ... per study, version and destination);
    returns its number."""
    number = sends.next_attempt(
        conn, Hl7Send, attempt.study_id, attempt.result_version, attempt.destination
    )
    conn.execute(
        insert(Hl7Send).values(
            study_id=attempt.study_id,
            result_version=attempt.result_version,
            destination=attempt.destination,
            attempt=number,
            status=attempt.status.value,
            message_control_id=attempt.message_control_id,
            ack_code=attempt.ack_code,
            error=None if attempt.error is None else attempt.error[:2000],
        )
    )
    return int(number)


@dataclass(frozen=True)
class Hl7Outcome:
    """The newest HL7 attempt of a study's results to one receiver."""

    destination: str
    result_version: int
    attempt: int
    status: Hl7SendStatus
    message_control_id: str
    ack_code: str | None
    error: str | None
    at: datetime


def newest_attempts(conn: Connection, study_ids: Sequence[int]) -> dict[int, list[Hl7Outcome]]:
    """study id → the newest attempt per HL7 destination, by destination."""
    if not study_ids:
        return {}
    rows = conn.execute(
        select(Hl7Send)
        .where(Hl7Send.study_id.in_(study_ids))
        .ext(distinct_on(Hl7Send.study_id, Hl7Send.destination))
        .order_by(Hl7Send.study_id, Hl7Send.destination, Hl7Send.id.desc())
    ).all()
    out: dict[int, list[Hl7Outcome]] = {}
    for r in rows:
        out.setdefault(r.study_id, []).append(
            Hl7Outcome(
                destination=r.destination,
                result_version=r.result_version,
                attempt=r.attempt,
                status=Hl7SendStatus(r.status),
                message_control_id=r.message_control_id,
                ack_code=r.ack_code,
                error=r.error,
                at=r.at,
            )
        )
    return out
