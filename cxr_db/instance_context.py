"""The patient context kept on an instance's row at ingest (migration 0008)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from cxr_db.schema import Instance


def stored_patient_context(engine: Engine, sop_instance_uid: str) -> dict[str, Any] | None:
    """The patient context recorded with one instance (``cxr_ingest.header``), or None
    (unknown instance, or recorded before ingest kept it)."""
    with engine.begin() as conn:
        value = conn.execute(
            select(Instance.patient_context).where(Instance.sop_instance_uid == sop_instance_uid)
        ).scalar_one_or_none()
    return dict(value) if isinstance(value, dict) else None
