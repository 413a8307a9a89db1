"""The results domain's table, ``result_sends`` (revision 0005), and the result columns'
constraint and index on ``studies`` (the columns themselves are declared on ``Study``)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cxr_db.base import Base
from cxr_db.instances.tables import Study
from cxr_db.results.states import (
    RESULT_STATE_CHECK_SQL,
    SEND_STATUS_CHECK_SQL,
    SEND_STATUS_TYPE,
    SendStatus,
)

cast(Table, Study.__table__).append_constraint(
    CheckConstraint(RESULT_STATE_CHECK_SQL, name="studies_result_state_valid")
)
Index("ix_studies_result_state", Study.result_state, Study.last_instance_at)


class ResultSend(Base):
    """One attempt to store one result version's objects on one destination."""

    __tablename__ = "result_sends"
    __table_args__ = (
        CheckConstraint(SEND_STATUS_CHECK_SQL, name="result_sends_status_valid"),
        Index("ix_result_sends_study", "study_id", "result_version", "destination"),
        # At most one successful send per (study, result version, destination).
        Index(
            "uq_result_sends_sent",
            "study_id",
            "result_version",
            "destination",
            unique=True,
            postgresql_where=text("status = 'sent'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    result_version: Mapped[int] = mapped_column(Integer)
    destination: Mapped[str] = mapped_column(String(300))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[SendStatus] = mapped_column(SEND_STATUS_TYPE)
    sc_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sc_status: Mapped[int | None] = mapped_column(Integer)
    sr_status: Mapped[int | None] = mapped_column(Integer)
    seg_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    seg_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
