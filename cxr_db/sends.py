"""The delivery protocol shared by every outbound send table (DICOM results in
``result_sends``, HL7 in ``hl7_sends``): one row per attempt, keyed by (study, result
version, destination), idempotent per key.

The sender holds :func:`send_lock` (a transaction-scoped advisory lock) while it checks
:func:`delivered`, sends, and inserts the attempt numbered by :func:`next_attempt`; each
table's partial unique index refuses a second delivered row as the last line. The domain
stores (``cxr_db.results.store``, ``cxr_db.hl7.store``) name the table and its
"delivered" status.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, exists, func, select

from cxr_db.hl7.tables import Hl7Send
from cxr_db.results.tables import ResultSend

__all__ = ["SendTable", "delivered", "last_delivered_version", "next_attempt", "send_lock"]

#: A table of send attempts: study_id, result_version, destination, status, attempt.
SendTable = type[ResultSend] | type[Hl7Send]


@contextmanager
def send_lock(
    engine: Engine, kind: str, study_id: int, result_version: int, destination: str
) -> Iterator[Connection | None]:
    """A transaction holding the advisory lock of (kind, study, version, destination), or
    None when another process holds it (it is sending that very thing now). Record the
    attempt on the yielded connection: it commits with the lock's release."""
    key = f"{kind}:{study_id}:{result_version}:{destination}"
    with engine.begin() as conn:
        locked = conn.execute(
            select(func.pg_try_advisory_xact_lock(func.hashtextextended(key, 0)))
        ).scalar_one()
        yield conn if locked else None


def delivered(
    conn: Connection,
    table: SendTable,
    done: str,
    study_id: int,
    result_version: int,
    destination: str,
) -> bool:
    """True when ``destination`` has a ``done`` attempt of this result version."""
    return bool(
        conn.execute(
            select(
                exists().where(
                    table.study_id == study_id,
                    table.result_version == result_version,
                    table.destination == destination,
                    table.status == done,
                )
            )
        ).scalar_one()
    )


def last_delivered_version(
    conn: Connection,
    table: SendTable,
    done: str,
    study_id: int,
    destination: str,
    before_version: int,
) -> int | None:
    """The newest result version below ``before_version`` with a ``done`` attempt."""
    return conn.execute(
        select(func.max(table.result_version)).where(
            table.study_id == study_id,
            table.destination == destination,
            table.status == done,
            table.result_version < before_version,
        )
    ).scalar_one_or_none()


def next_attempt(
    conn: Connection, table: SendTable, study_id: int, result_version: int, destination: str
) -> int:
    """The number of the next attempt (1, 2, ...) per study, version and destination."""
    count = conn.execute(
        select(func.count()).where(
            table.study_id == study_id,
            table.result_version == result_version,
            table.destination == destination,
        )
    ).scalar_one()
    return int(count) + 1
