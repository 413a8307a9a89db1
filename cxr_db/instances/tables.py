"""The instances domain's tables: ``studies`` 1─* ``instances`` 1─* ``predictions``
(Alembic revisions in ``migrations/`` create them; every domain's tables: ``cxr_db.schema``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base
from cxr_db.instances.statuses import STATUS_CHECK_SQL, STATUS_TYPE, InstanceStatus
from cxr_db.results.states import RESULT_STATE_TYPE, ResultState


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    score: Mapped[float | None] = mapped_column(Float)
    first_received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Results back to PACS (revision 0005; states in ``cxr_db.results.states``, their check
    # and index in ``cxr_db.results.tables``). The ``instances`` insert trigger stamps
    # last_instance_at and reopens a finished study.
    result_state: Mapped[ResultState] = mapped_column(
        RESULT_STATE_TYPE, default=ResultState.RECEIVING, server_default=ResultState.RECEIVING.value
    )
    result_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_instance_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    results_enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The study's patient, fixed by its first instance (revision 0016): keyed hashes of
    #: the identifying attributes, no values (``cxr_ingest.identity``); NULL before.
    patient_identity: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        CheckConstraint(STATUS_CHECK_SQL, name="instances_status_valid"),
        Index("ix_instances_status_received", "status", "received_at"),
        Index(
            "ix_instances_pending_lease",
            "status",
            "lease_expires_at",
            postgresql_where=text("status IN ('received', 'queued', 'processing')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    storage_uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[InstanceStatus] = mapped_column(
        STATUS_TYPE, default=InstanceStatus.RECEIVED, server_default=InstanceStatus.RECEIVED.value
    )
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Worker lease (migration 0004): who is scoring the instance, and until when.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # revision 0006: the active model's population check (cxr_common.population)
    population: Mapped[str | None] = mapped_column(String(16))
    population_reason: Mapped[str | None] = mapped_column(Text)
    #: revision 0009: which check decided the population (header, image, both) and the
    #: image's distance from the model's training distribution
    population_check: Mapped[str | None] = mapped_column(String(8))
    image_distance: Mapped[float | None] = mapped_column(Float)
    #: sha256 of the received data set (migration 0007; None for older rows).
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The patient context the study page shows, from the header read at ingest
    #: (migration 0008; None for older rows): ``cxr_ingest.header.patient_context``.
    patient_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: The scoring lane chosen when the instance was recorded (``cxr_queue.lanes``):
    #: ``urgent`` (scored first) or ``normal``; the reconciler re-enqueues into it.
    lane: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("instance_id", "model_version", name="uq_prediction"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    calibration_version: Mapped[str | None] = mapped_column(String(64))
    logit: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    heatmap_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    device: Mapped[str] = mapped_column(String(32))
    batch_size: Mapped[int] = mapped_column(Integer)
    decode_ms: Mapped[float] = mapped_column(Float)
    inference_ms: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # revision 0006: whether this prediction may set priority (False: shadow, see
    # cxr_db.registry), and the role of the model that made it ("active" or "shadow")
    triage: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    model_role: Mapped[str] = mapped_column(String(8), default="active", server_default="active")
    # revision 0010: the score's interval from the calibration (None: the calibration has
    # none), see cxr_model.calibration.ScoreInterval
    score_lower: Mapped[float | None] = mapped_column(Float)
    score_upper: Mapped[float | None] = mapped_column(Float)


# revision 0006: drift reads predictions by day
Index("ix_predictions_created_at", Prediction.created_at)
# Time to read windows by arrival (revision 0011, cxr_db.reading.stats).
Index("ix_studies_first_received_at", Study.first_received_at)
