"""The registry domain's tables (revision 0006): ``models``, every registered model by
version and its state, and ``population_strata``, the strata a site enabled."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base, check_in


class ModelState(enum.StrEnum):
    REGISTERED = "registered"  # known, scores nothing
    SHADOW = "shadow"  # scores every instance, never sets priority
    ACTIVE = "active"  # the one model whose scores triage
    RETIRED = "retired"  # was active or shadow, scores nothing now


class CalibrationSource(enum.StrEnum):
    """``models.calibration_source`` (revision 0010): where the registered calibration
    came from."""

    SHIPPED = "shipped"  # the file given with the model folder (fitted elsewhere)
    SITE = "site"  # fitted for this version on this site's answers (calibrate --from-shadow)


class ModelRole(enum.StrEnum):
    """``predictions.model_role``: the role of the model when it made the prediction."""

    ACTIVE = "active"
    SHADOW = "shadow"


class RegisteredModel(Base):
    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint(check_in("state", ModelState), name="models_state_valid"),
        CheckConstraint(
            check_in("calibration_source", CalibrationSource),
            name="models_calibration_source_valid",
        ),
        Index(
            "uq_models_one_active",
            "state",
            unique=True,
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    calibration_uri: Mapped[str] = mapped_column(Text)
    calibration_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    registered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    registered_by: Mapped[str] = mapped_column(String(128))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # revision 0010: where the calibration came from, and its sample size when fitted here
    calibration_source: Mapped[str] = mapped_column(
        String(16), default=CalibrationSource.SHIPPED.value, server_default="shipped"
    )
    calibration_n: Mapped[int | None] = mapped_column(Integer)


class PopulationStratumRow(Base):
    __tablename__ = "population_strata"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stratum: Mapped[str] = mapped_column(String(64), unique=True)
    dimension: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(32))
    enabled: Mapped[bool] = mapped_column(Boolean)
    model_sha256: Mapped[str] = mapped_column(String(64))
    calibration_version: Mapped[str] = mapped_column(String(64))
    validation_sha256: Mapped[str] = mapped_column(String(64))
    data_hash: Mapped[str | None] = mapped_column(String(64))
    positives: Mapped[int] = mapped_column(Integer)
    sensitivity_lower: Mapped[float] = mapped_column(Float)
    changed_by: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
