"""Result states of a study and send outcomes, defined once (results back to PACS).

A study's result state moves::

    receiving ──(quiet for CXR_STUDY_QUIET_S, no instance pending)──▶ complete
    complete ──(every destination stored both objects)──▶ results_sent
    complete ──(retries exhausted for a destination)──▶ results_failed
    complete | results_sent | results_failed ──(a new instance arrives)──▶ receiving,
                                                 result_version + 1

``complete`` is also where a study stays when no destination is configured (nothing is
sent). The reopening transition is done by Postgres itself (the ``instances`` insert
trigger of revision 0005), so every writer of instances gets it.
"""

from __future__ import annotations

import enum

from sqlalchemy import Enum

from cxr_db.base import check_in, enum_values


class ResultState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    RESULTS_SENT = "results_sent"
    RESULTS_FAILED = "results_failed"


class SendStatus(enum.StrEnum):
    """The outcome of one attempt to store a result version's objects on one destination."""

    SENT = "sent"
    """Both objects stored (DICOM Success or Warning)."""
    FAILED = "failed"
    """No association, or at least one object not stored (``error`` says why)."""


RESULT_STATE_TYPE: Enum = Enum(
    ResultState,
    native_enum=False,
    values_callable=enum_values,
    length=16,
    create_constraint=False,  # the named check constraint (Alembic 0005)
    validate_strings=True,
    name="result_state",
)
SEND_STATUS_TYPE: Enum = Enum(
    SendStatus,
    native_enum=False,
    values_callable=enum_values,
    length=16,
    create_constraint=False,
    validate_strings=True,
    name="send_status",
)
RESULT_STATE_CHECK_SQL = check_in("result_state", ResultState)
SEND_STATUS_CHECK_SQL = check_in("status", SendStatus)
