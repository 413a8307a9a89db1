"""The project's exception hierarchy.

    CxrTriageError                 root: everything cxr-triage raises on purpose
    ├── ConfigurationError         settings missing or inconsistent: the message says what to set
    ├── StorageError               an instance could not be written or read
    │   └── InstanceMissingError   the stored file is not where its URI says
    ├── TransientError             worth retrying (database or broker briefly unreachable)
    ├── cxr_imaging.ImagingError   an input that cannot become pixels
    └── cxr_model.ModelError       weights, contract or calibration refused

Boundaries convert third-party exceptions into these with ``raise ... from exc``.
"""


class CxrTriageError(Exception):
    """Root of every exception cxr-triage raises on purpose."""


class ConfigurationError(CxrTriageError):
    """Settings are missing or inconsistent; the message says what to set."""


class StorageError(CxrTriageError):
    """An instance could not be written to or read from storage."""


class InstanceMissingError(StorageError):
    """The stored instance is not where its URI points (volume not mounted, file removed)."""


class TransientError(CxrTriageError):
    """A failure that a retry may cure (service briefly unreachable)."""
