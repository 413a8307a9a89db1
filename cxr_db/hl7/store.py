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

from sqlalchemy import Connection, Engine, exists, func, insert, select
from sqlalchemy.dialects.postgresql import distinct_on

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
    """A transaction holding the advisory lock of (study, version, HL7 destination), or
    None when another process holds it (it is sending that very message now). Record the
    attempt on the yielded connection: it commits with the lock's release."""
    key = f"cxr-hl7:{study_id}:{result_version}:{destination}"
    with engine.begin() as conn:
        locked = conn.execute(
            select(func.pg_try_advisory_xact_lock(func.hashtextextended(key, 0)))
        ).scalar_one()
        yield conn if locked else None


def already_accepted(
    conn: Connection, study_id: int, result_version: int, destination: str
) -> bool:
    """True when ``destination`` accepted (AA) this result version already."""
    return bool(
        conn.execute(
            select(
                exists().where(
                    Hl7Send.study_id == study_id,
                    Hl7Send.result_version == result_version,
                    Hl7Send.destination == destination,
                    Hl7Send.status == Hl7SendStatus.ACCEPTED.value,
                )
            )
        ).scalar_one()
    )


def last_accepted_version(
    conn: Connection, study_id: int, destination: str, before_version: int
) -> int | None:
    """The newest result version below ``before_version`` that ``destination`` accepted."""
    return conn.execute(
        select(func.max(Hl7Send.result_version)).where(
            Hl7Send.study_id == study_id,
            Hl7Send.destination == destination,
            Hl7Send.status == Hl7SendStatus.ACCEPTED.value,
            Hl7Send.result_version < before_version,
        )
    ).scalar_one_or_none()


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
    number = (
        conn.execute(
            select(func.count()).where(
                Hl7Send.study_id == attempt.study_id,
                Hl7Send.result_version == attempt.result_version,
                Hl7Send.destination == attempt.destination,
            )
        ).scalar_one()
        + 1
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
