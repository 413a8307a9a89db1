"""What one scoring job did, named once. ``cxr.score_instance`` returns the value.

Failure reasons are coded (:class:`FailureCode`, fixed text in :data:`FAILURE_TEXT`, plus
at most the error's class name): a decoder's or parser's own message may quote header
values, and reasons reach the worklist, the logs and the not-analysed SR sent to PACS.

The first three are the instance's final status
(``cxr_db.instances.statuses.FINAL_STATUSES``) as the
job wrote it; the other three touch no row, so they are no ``InstanceStatus`` and the
``instances.status`` column refuses them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cxr_db.instances.statuses import InstanceStatus


class FailureCode(enum.StrEnum):
    """Why the worker could not score an instance it read (the text: :data:`FAILURE_TEXT`)."""

    UNREADABLE_DICOM = "unreadable_dicom"
    NO_IMAGE = "no_image"
    UNDECODABLE_PIXELS = "undecodable_pixels"


#: The reason recorded for each :class:`FailureCode` (``cxr_common.metrics`` counts them by
#: their opening words: keep those).
FAILURE_TEXT: dict[FailureCode, str] = {
    FailureCode.UNREADABLE_DICOM: "unreadable DICOM: resend the study, and read it without a score",
    FailureCode.NO_IMAGE: "unreadable DICOM: the instance holds no image (no Pixel Data); "
    "resend the study, and read it without a score",
    FailureCode.UNDECODABLE_PIXELS: "pixel data could not be decoded: ask the modality to "
    "resend the study, and read the image without a score",
}


def failure_reason(code: FailureCode, error: BaseException | None = None) -> str:
    """The coded reason for ``code``; ``error``'s class name, never its message."""
    text = FAILURE_TEXT[code]
    return text if error is None else f"{text} ({type(error).__name__})"


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
