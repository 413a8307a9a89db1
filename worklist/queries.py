"""Read-only queries the web worklist needs beyond ``cxr_db.repository``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text


@dataclass(frozen=True)
class InstanceDetail:
    """One instance of a study with its newest prediction, if it was scored."""

    sop_instance_uid: str
    status: str
    reason: str | None
    view_position: str | None
    received_at: datetime
    probability: float | None
    threshold: float | None
    flagged: bool | None
    model_version: str | None
    scored_at: datetime | None
    has_heatmap: bool


@dataclass(frozen=True)
class StudyDetail:
    study_instance_uid: str
    accession_number: str | None
    flagged: bool
    score: float | None
    received_at: datetime
    instances: tuple[InstanceDetail, ...]

    @property
    def status(self) -> str:
        """The study's status, with the same precedence as the worklist SQL."""
        statuses = {i.status for i in self.instances}
        for status in ("processing", "queued", "received", "done", "failed"):
            if status in statuses:
                return status
        return "not_eligible"

    @property
    def model_version(self) -> str | None:
        scored = [i for i in self.instances if i.scored_at is not None]
        if not scored:
            return None
        return max(scored, key=lambda i: i.scored_at or i.received_at).model_version

    @property
    def scored_at(self) -> datetime | None:
        times = [i.scored_at for i in self.instances if i.scored_at is not None]
        return max(times) if times else None


_STUDY_SQL = text(
    """
    SELECT s.id, s.study_instance_uid, s.accession_number, s.flagged, s.score,
           s.first_received_at AS received_at
    FROM studies s WHERE s.study_instance_uid = :uid
    """
)

_INSTANCES_SQL = text(
    """
    SELECT i.sop_instance_uid, i.status, i.reason, i.view_position, i.received_at,
           p.probability, p.threshold, p.flagged, p.model_version,
           p.created_at AS scored_at, p.has_heatmap
    FROM instances i
    LEFT JOIN LATERAL (
      SELECT probability, threshold, flagged, model_version, created_at,
             heatmap_png IS NOT NULL AS has_heatmap
      FROM predictions WHERE instance_id = i.id
      ORDER BY created_at DESC LIMIT 1
    ) p ON true
    WHERE i.study_id = :study_id
    ORDER BY p.probability DESC NULLS LAST, i.received_at ASC, i.id ASC
    """
)


def study_detail(engine: Engine, study_instance_uid: str) -> StudyDetail | None:
    """One study and its instances (highest probability first), or None if unknown."""
    with engine.begin() as conn:
        study = conn.execute(_STUDY_SQL, {"uid": study_instance_uid}).one_or_none()
        if study is None:
            return None
        rows = conn.execute(_INSTANCES_SQL, {"study_id": study.id}).all()
    return StudyDetail(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        flagged=study.flagged,
        score=study.score,
        received_at=study.received_at,
        instances=tuple(
            InstanceDetail(
                sop_instance_uid=r.sop_instance_uid,
                status=r.status,
                reason=r.reason,
                view_position=r.view_position,
                received_at=r.received_at,
                probability=r.probability,
                threshold=r.threshold,
                flagged=r.flagged,
                model_version=r.model_version,
                scored_at=r.scored_at,
                has_heatmap=bool(r.has_heatmap),
            )
            for r in rows
        ),
    )


def database_answers(engine: Engine) -> None:
    """Run ``SELECT 1``; raises the driver's error when the database does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
