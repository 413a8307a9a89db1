"""Errors of the HL7 package, placed in the project's hierarchy.

    cxr_common.errors.CxrTriageError
    ├── ConfigurationError
    │   └── Hl7ConfigError          CXR_HL7_DESTINATIONS (or an MSH setting) is malformed
    ├── TransientError
    │   └── Hl7DeliveryError        no acknowledgement: refused, timed out, dropped, garbage
    └── Hl7Error                    root of what building a message raises
        └── Hl7MessageError         the inputs cannot become a valid ORU^R01

``Hl7DeliveryError`` is a :class:`~cxr_common.errors.TransientError`: worth retrying.
Messages name destinations and message control ids, never patient data.
"""

from __future__ import annotations

from cxr_common.errors import ConfigurationError, CxrTriageError, TransientError


class Hl7Error(CxrTriageError):
    """Root of the errors building an HL7 message raises on purpose."""


class Hl7MessageError(Hl7Error):
    """The inputs cannot become a valid ORU^R01 (the message says which field)."""


class Hl7ConfigError(ConfigurationError):
    """A ``CXR_HL7_DESTINATIONS`` entry or an MSH setting is malformed."""


class Hl7DeliveryError(TransientError):
    """No usable acknowledgement came back (connection refused, timed out or dropped, or
    an answer that is not an HL7 ACK of our message). ``reason`` says which."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"HL7 to {destination}: {reason}")
        self.destination = destination
        self.reason = reason
