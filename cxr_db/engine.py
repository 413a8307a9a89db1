"""Engine construction; one engine per process, created by the caller.

Every wait on Postgres is bounded (issue 12, defect 8): a connect gives up after
``CONNECT_TIMEOUT_S``, a statement after ``STATEMENT_TIMEOUT_MS``, a lock wait after
``LOCK_TIMEOUT_MS``, a checkout from a full pool after ``POOL_TIMEOUT_S``; TCP keepalives
notice a peer that vanished behind a partition within about half a minute. The caller
turns the resulting ``OperationalError`` into a retry or a DICOM status.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine, create_engine

CONNECT_TIMEOUT_S: Final = 5
STATEMENT_TIMEOUT_MS: Final = 60_000
LOCK_TIMEOUT_MS: Final = 10_000
POOL_TIMEOUT_S: Final = 30


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """Create a Postgres engine with liveness checks on checkout and bounded waits. Its
    errors never carry the statement's parameters (they hold patient context)."""
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=10,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    )
