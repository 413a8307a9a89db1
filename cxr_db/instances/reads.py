"""Reads of one instance: its stored file, its status, its newest heatmap; and whether the
database answers at all. The worklist's reads of whole studies are in ``cxr_db.worklist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text

from cxr_db.instances.statuses import InstanceStatus
from cxr_db.instances.tables import Instance, Prediction, Study
from cxr_db.registry.tables import ModelRole


def heatmap_png(engine: Engine, sop_instance_uid: str) -> bytes | None:
    """The newest heatmap PNG of one instance, if it was scored."""
    with engine.begin() as conn:
        return conn.execute(
            select(Prediction.heatmap_png)
            .join(Instance, Instance.id == Prediction.instance_id)
            .where(
                Instance.sop_instance_uid == sop_instance_uid,
                Prediction.model_role == ModelRole.ACTIVE.value,
            )
            .order_by(Prediction.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()


@dataclass(frozen=True)
class InstanceFile:
    """Where one instance is stored, and what became of it."""

    sop_instance_uid: str
    study_instance_uid: str
    storage_uri: str
    status: InstanceStatus


def instance_file(engine: Engine, sop_instance_uid: str) -> InstanceFile | None:
    """The stored file of one instance, or None if unknown."""
    with engine.begin() as conn:
        row = conn.execute(
            select(
                Instance.sop_instance_uid,
                Study.study_instance_uid,
                Instance.storage_uri,
                Instance.status,
            )
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_instance_uid == sop_instance_uid)
        ).one_or_none()
    if row is None:
        return None
    return InstanceFile(row.sop_instance_uid, row.study_instance_uid, row.storage_uri, row.status)


def instance_statuses(engine: Engine) -> dict[str, InstanceStatus]:
    """sop_instance_uid → status, for tests and progress displays."""
    with engine.begin() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.status)).all()
    return {r.sop_instance_uid: r.status for r in rows}


def database_answers(engine: Engine) -> None:
    """Run ``SELECT 1``; raises the driver's error when the database does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def stored_patient_context(engine: Engine, sop_instance_uid: str) -> dict[str, Any] | None:
    """The patient context recorded with one instance (``cxr_ingest.header``), or None
    (unknown instance, or recorded before ingest kept it)."""
    with engine.begin() as conn:
        value = conn.execute(
            select(Instance.patient_context).where(Instance.sop_instance_uid == sop_instance_uid)
        ).scalar_one_or_none()
    return dict(value) if isinstance(value, dict) else None
