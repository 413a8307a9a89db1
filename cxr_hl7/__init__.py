"""HL7 v2 results to the RIS: the ORU^R01 message, MLLP framing and the ACK.

* :mod:`cxr_hl7.destinations`: ``CXR_HL7_DESTINATIONS`` parsed into ``host:port``.
* :mod:`cxr_hl7.message`: the ORU^R01 of one study's result version (built with hl7apy).
* :mod:`cxr_hl7.mllp`: ``0x0B ... 0x1C 0x0D`` framing and one send-and-wait exchange.
* :mod:`cxr_hl7.ack`: the receiver's ACK (parsed with the ``hl7`` library).

Pure: no database, queue or model code (it imports only :mod:`cxr_common`); delivery,
attempts and retries are the results sender's (``cxr_sender.hl7``).
"""

from cxr_hl7.ack import Ack, AckCode, AckError, parse_ack
from cxr_hl7.destinations import Hl7Destination, parse_hl7_destination, parse_hl7_destinations
from cxr_hl7.errors import Hl7ConfigError, Hl7DeliveryError, Hl7Error, Hl7MessageError
from cxr_hl7.message import (
    AnalysisStatus,
    MessageHeader,
    Patient,
    Procedure,
    StudyResult,
    build_oru,
    escape,
    message_control_id,
)
from cxr_hl7.mllp import exchange, frame, unframe

__all__ = [
    "Ack",
    "AckCode",
    "AckError",
    "AnalysisStatus",
    "Hl7ConfigError",
    "Hl7DeliveryError",
    "Hl7Destination",
    "Hl7Error",
    "Hl7MessageError",
    "MessageHeader",
    "Patient",
    "Procedure",
    "StudyResult",
    "build_oru",
    "escape",
    "exchange",
    "frame",
    "message_control_id",
    "parse_ack",
    "parse_hl7_destination",
    "parse_hl7_destinations",
    "unframe",
]
