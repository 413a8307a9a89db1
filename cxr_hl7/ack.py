"""Reading the receiver's acknowledgement (parsed with the ``hl7`` library).

An ACK is ``MSH`` + ``MSA`` (+ ``ERR``): MSA-1 is the acknowledgement code, MSA-2 the
message control id it answers, MSA-3 a text; ERR (v2.5: ERR-3 error code, ERR-8 user
message, ERR-7 diagnostic information; v2.3: ERR-1) says what went wrong.

=========  ============================================  =========================
MSA-1      meaning                                       the sender
=========  ============================================  =========================
AA / CA    application (commit) accept                   done: accepted
AE / CE    application (commit) error                    recorded, retried
AR / CR    application (commit) reject                   recorded, retried
=========  ============================================  =========================

An answer that is not HL7, has no MSA, an unknown code, or acknowledges another control
id is an :class:`AckError` (the sender records it and retries).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import hl7

__all__ = ["Ack", "AckCode", "AckError", "parse_ack"]


class AckCode(enum.StrEnum):
    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"


ACCEPTED = frozenset({AckCode.AA, AckCode.CA})


class AckError(ValueError):
    """The answer is not an acknowledgement of our message (the text says why; it never
    quotes the answer, which may echo patient data)."""


@dataclass(frozen=True)
class Ack:
    code: AckCode
    control_id: str
    text: str | None
    """MSA-3 and the ERR segments' texts, joined; None when the receiver gave none."""

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def _field(segment: hl7.Segment, index: int) -> str:
    try:
        return str(segment[index]).strip()
    except IndexError:
        return ""


def parse_ack(answer: str, expected_control_id: str) -> Ack:
    """The acknowledgement in ``answer``; AckError when it is not an ACK of
    ``expected_control_id``."""
    text = answer.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH"):
        raise AckError("the answer is not an HL7 message (no MSH segment first)")
    try:
        message = hl7.parse(text)
        msa = message.segment("MSA")
    except KeyError:
        raise AckError("the answer has no MSA segment") from None
    except (ValueError, IndexError, hl7.HL7Exception) as exc:
        raise AckError(f"the answer cannot be parsed as HL7 ({type(exc).__name__})") from None
    raw_code = _field(msa, 1).upper()
    try:
        code = AckCode(raw_code)
    except ValueError:
        raise AckError(f"MSA-1 {raw_code[:8]!r} is not an acknowledgement code") from None
    control_id = message.unescape(_field(msa, 2))
    if control_id != expected_control_id:
        raise AckError(f"the ACK answers message {control_id[:40]!r}, not {expected_control_id!r}")
    texts = [message.unescape(_field(msa, 3))]
    for err in message.segments("ERR") if _has(message, "ERR") else []:
        # v2.5 user message, diagnostic information, error code; v2.3 code and location
        for index in (8, 7, 3, 1):
            value = _field(err, index)
            if value:
                texts.append(message.unescape(value.replace("^", " ").strip()))
                break
    joined = "; ".join(dict.fromkeys(t for t in texts if t))
    return Ack(code=code, control_id=control_id, text=joined[:1000] or None)


def _has(message: hl7.Message, segment_id: str) -> bool:
    try:
        message.segments(segment_id)
    except KeyError:
        return False
    return True
