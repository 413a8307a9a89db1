"""What one scoring job did, named once. ``cxr.score_instance`` returns the value.

The first three are the instance's final status
(``cxr_db.instances.statuses.FINAL_STATUSES``) as the
job wrote it; the other three touch no row, so they are no ``InstanceStatus`` and the
``instances.status`` column refuses them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cxr_db.instances.statuses import InstanceStatus


class JobOutcome(enum.StrEnum):
    DONE = InstanceStatus.DONE.value
    NOT_ELIGIBLE = InstanceStatus.NOT_ELIGIBLE.value
    FAILED = InstanceStatus.FAILED.value
    SKIPPED = "skipped"
    """The instance was already final or is unknown (a redelivered or stale job)."""
    INVALID = "invalid"
    """The payload did not validate; the job was dropped."""
    DEFERRED = "deferred"
    """The database stayed unreachable through every retry: the row stays pending and
    the listener's reconciler re-enqueues it once the database is back."""


@dataclass(frozen=True)
class Outcome:
    status: JobOutcome
    reason: str | None = None
    probability: float | None = None
