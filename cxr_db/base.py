"""The declarative base every domain's tables share (one ``Base.metadata``, see
``cxr_db.schema``) and the helpers their closed vocabularies use."""

from __future__ import annotations

import enum

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


def enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    """The stored values of an enum, in definition order (``Enum(values_callable=...)``)."""
    return [str(member.value) for member in enum_cls]


def check_in(column: str, values: type[enum.Enum]) -> str:
    """``column IN ('a', 'b')`` for a CHECK constraint over an enum's values."""
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in enum_values(values)) + ")"
