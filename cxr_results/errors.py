"""Errors of the results package, placed in the project's hierarchy.

    cxr_common.errors.CxrTriageError
    ├── ConfigurationError
    │   ├── DestinationConfigError   CXR_RESULT_DESTINATIONS has a malformed entry
    │   └── UidRootError             CXR_UID_ROOT is not a usable UID root
    ├── TransientError
    │   └── AssociationError         no association with a destination: retry later
    └── ResultsError                 root of what building result objects raises
        └── ResultObjectError        the inputs cannot become a valid DICOM object

``AssociationError`` is a :class:`~cxr_common.errors.TransientError`, so a Celery task can
``autoretry_for=(TransientError,)`` on it. Messages name destinations and UIDs, never
patient data.
"""

from __future__ import annotations

from cxr_common.errors import ConfigurationError, CxrTriageError, TransientError


class ResultsError(CxrTriageError):
    """Root of the errors that building result objects raises on purpose."""


class ResultObjectError(ResultsError):
    """The inputs cannot become a valid Secondary Capture or SR (the message says why)."""


class DestinationConfigError(ConfigurationError):
    """A ``CXR_RESULT_DESTINATIONS`` entry is malformed; the message names the entry."""


class UidRootError(ConfigurationError):
    """``CXR_UID_ROOT`` is not a valid UID root with room left for derived UIDs."""


class AssociationError(TransientError):
    """No association with a destination (refused, rejected, aborted or timed out).

    ``destination`` is the ``AE@host:port`` text; ``reason`` says what happened."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"no association with {destination}: {reason}")
        self.destination = destination
        self.reason = reason
