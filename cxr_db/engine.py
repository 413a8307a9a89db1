"""Engine construction; one engine per process, created by the caller."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """Create a Postgres engine with liveness checks on checkout."""
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10)
