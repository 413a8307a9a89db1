"""The ORU^R01 (HL7 v2.5.1) that carries one study's result to the RIS, built with hl7apy.

One message per (study, result version)::

    MSH  sending/receiving application and facility, message control id, 2.5.1, UTF-8
    PID  patient id (with its issuer) and name, from the DICOM header
    ORC  RE; placer and filler order number = accession number (the Study Instance UID
         when the study has none); CM; priority S (stat) when flagged
    TQ1  priority S^Stat^HL70485, only when flagged
    OBR  the same order numbers, the study's procedure, study time, result status
         F (first result to this receiver) or C (a newer version corrects it), priority
    NTE  the clinical-decision-support statement (cxr_common.clinical.DISCLAIMER)
    OBX  analysis status (CWE), and for a scored study: score (NM), flag (CE, HL70136
         Y/N), threshold (NM), score 95 % interval lower/upper (NM), the finding scored
         (CWE, the model contract's code, e.g. SNOMED CT 233604007 Pneumonia), the
         model (ST); for a study not analysed, the reason (ST); always the Study
         Instance UID (ST, DCM 110180) and, with a public base URL, the study page (RP)

A study whose score was made outside the validated population (shadow) carries no score
and no flag: its status says so, with the reason, as the SR does. The priority is set
only when flagged and left empty otherwise: empty means "no change" to the RIS, and a
routine priority from us must never lower what the ordering side asked for.

Text goes through :func:`escape` (``\\ | ^ & ~`` as ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``,
control characters as spaces) before hl7apy places it, so no header value can add a
field, a segment or an MLLP block. hl7apy checks the structure against its 2.5.1 tables.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment
from hl7apy.exceptions import HL7apyException

from cxr_common.clinical import DISCLAIMER
from cxr_common.model_files import ModelFinding
from cxr_hl7.errors import Hl7MessageError

__all__ = [
    "HL7_VERSION",
    "LOCAL_CODING_SYSTEM",
    "AnalysisStatus",
    "MessageHeader",
    "Patient",
    "Procedure",
    "StudyResult",
    "build_oru",
    "escape",
    "message_control_id",
]

HL7_VERSION = "2.5.1"
#: HL7's local coding systems start with 99.
LOCAL_CODING_SYSTEM = "99CXR"
#: MSH-10 is ST(20) in v2.5.1.
CONTROL_ID_LENGTH = 20


class AnalysisStatus(enum.StrEnum):
    """What happened to the study (the status OBX, code system 99CXR)."""

    SCORED = "SCORED"
    NOT_ELIGIBLE = "NOT_ELIGIBLE"
    FAILED = "FAILED"
    OUTSIDE_POPULATION = "OUTSIDE_POPULATION"


STATUS_TEXT = {
    AnalysisStatus.SCORED: "Scored",
    AnalysisStatus.NOT_ELIGIBLE: "Not analysed: not eligible",
    AnalysisStatus.FAILED: "Not analysed: analysis failed",
    AnalysisStatus.OUTSIDE_POPULATION: "Not used for triage: outside validated population",
}


@dataclass(frozen=True)
class MessageHeader:
    """MSH-3 to MSH-6 (HD namespace ids)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str


@dataclass(frozen=True)
class Patient:
    """From the DICOM header; never logged. ``name`` is a DICOM PN value
    (``Family^Given^Middle^Prefix^Suffix``)."""

    patient_id: str | None
    issuer: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Procedure:
    """The study's procedure: a code (value, meaning, scheme) or only a text."""

    text: str
    code_value: str | None = None
    coding_scheme: str | None = None


@dataclass(frozen=True)
class StudyResult:
    """Everything one ORU^R01 says (patient data only in ``patient`` and ``procedure``)."""

    study_instance_uid: str
    accession_number: str | None
    patient: Patient
    procedure: Procedure | None
    study_datetime: datetime | None
    result_version: int
    corrects_earlier: bool
    """True when this receiver accepted an earlier version: result status C, else F."""
    status: AnalysisStatus
    reason: str | None = None
    score: float | None = None
    threshold: float | None = None
    flagged: bool = False
    score_interval: tuple[float, float] | None = None
    model_name: str | None = None
    model_version: str | None = None
    finding: ModelFinding | None = None
    study_url: str | None = None

    @property
    def order_number(self) -> str:
        """The placer/filler order number: the accession number, else the study UID."""
        return (self.accession_number or "").strip() or self.study_instance_uid

    @property
    def priority_stat(self) -> bool:
        return self.status is AnalysisStatus.SCORED and self.flagged


def escape(text: str) -> str:
    """``text`` as an HL7 v2 ST/FT value with the default delimiters: the escape
    character first, then ``| ^ & ~``; control characters become spaces."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in out)


def _components(*parts: str | None) -> str:
    """Escaped components joined by ``^``, trailing empty ones left out."""
    values = [escape(p) if p else "" for p in parts]
    while values and not values[-1]:
        values.pop()
    return "^".join(values)


def message_control_id(study_instance_uid: str, result_version: int) -> str:
    """MSH-10: the same for every attempt of one (study, version), so a receiver that
    got a message whose ACK was lost recognises the retry; different for every study and
    version (the study UID is globally unique, so a rebuilt database does not reuse one)."""
    digest = hashlib.sha256(f"{study_instance_uid}|{result_version}".encode()).hexdigest()
    return ("CXR" + digest)[:CONTROL_ID_LENGTH].upper()


def _dtm(at: datetime) -> str:
    """HL7 DTM; a naive time (DICOM's StudyDate/StudyTime are local, with no offset) is
    sent without an offset rather than with a made-up one."""
    return at.strftime("%Y%m%d%H%M%S%z" if at.tzinfo else "%Y%m%d%H%M%S")


def _number(value: float) -> str:
    return f"{value:.4f}"


def _xpn(dicom_name: str | None) -> str:
    """A DICOM PN (alphabetic group) as XPN: family^given^middle^suffix^prefix."""
    if not dicom_name:
        return ""
    alphabetic = dicom_name.split("=")[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return _components(family, given, middle, suffix, prefix)


def _set(segment: Segment, field: str, er7: str) -> None:
    if er7:
        setattr(segment, field, er7)


@dataclass(frozen=True)
class _Obx:
    value_type: str
    code: str
    text: str
    value: str
    system: str = LOCAL_CODING_SYSTEM


def _observations(result: StudyResult) -> list[_Obx]:
    status = result.status
    rows = [
        _Obx(
            "CWE",
            "CXR-STATUS",
            "Analysis status",
            _components(status.value, STATUS_TEXT[status], LOCAL_CODING_SYSTEM),
        )
    ]
    if status is AnalysisStatus.SCORED:
        if result.score is None or result.threshold is None:
            raise Hl7MessageError("a scored result needs a score and a threshold")
        name = result.finding.display if result.finding else "Finding"
        rows += [
            _Obx(
                "NM", "CXR-SCORE", f"{name} score (calibrated probability)", _number(result.score)
            ),
            _Obx(
                "CE",
                "CXR-FLAG",
                "Flagged for priority reading",
                "Y^Yes^HL70136" if result.flagged else "N^No^HL70136",
            ),
            _Obx("NM", "CXR-THRESHOLD", "Operating threshold", _number(result.threshold)),
        ]
        if result.score_interval is not None:
            lower, upper = result.score_interval
            rows += [
                _Obx("NM", "CXR-SCORE-LOW95", "Score 95% interval, lower", _number(lower)),
                _Obx("NM", "CXR-SCORE-HIGH95", "Score 95% interval, upper", _number(upper)),
            ]
    elif result.reason:
        rows.append(_Obx("ST", "CXR-REASON", "Why not analysed", escape(result.reason[:900])))
    if result.finding is not None:
        f = result.finding
        rows.append(
            _Obx(
                "CWE",
                "CXR-FINDING",
                "Finding scored",
                _components(f.code_value, f.code_meaning, f.code_scheme),
            )
        )
    if result.model_version:
        model = " ".join(p for p in (result.model_name, result.model_version) if p)
        rows.append(_Obx("ST", "CXR-MODEL", "Model version", escape(model)))
    rows.append(
        _Obx("ST", "110180", "Study Instance UID", escape(result.study_instance_uid), "DCM")
    )
    if result.study_url:
        rows.append(
            _Obx(
                "RP",
                "CXR-LINK",
                "Study page",
                _components(result.study_url, "CXR_TRIAGE", "TEXT", "HTML"),
            )
        )
    return rows


def _fill(
    message: Message, result: StudyResult, header: MessageHeader, control_id: str, now: datetime
) -> None:
    msh = message.msh
    _set(msh, "msh_3", _components(header.sending_application))
    _set(msh, "msh_4", _components(header.sending_facility))
    _set(msh, "msh_5", _components(header.receiving_application))
    _set(msh, "msh_6", _components(header.receiving_facility))
    msh.msh_7 = _dtm(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = escape(control_id)
    msh.msh_11 = "P"
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = "UNICODE UTF-8"

    patient_result: Group = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    patient = result.patient
    if patient.patient_id:
        issuer = _components(patient.issuer) if patient.issuer else ""
        pid.pid_3 = escape(patient.patient_id) + (f"^^^{issuer}" if issuer else "")
    else:
        pid.pid_3 = '""'  # HL7 null: the header has no Patient ID
    pid.pid_5 = _xpn(patient.name) or '""'  # required; HL7 null when the header has none

    order: Group = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    number = escape(result.order_number)
    stat = result.priority_stat
    order.orc.orc_1 = "RE"
    order.orc.orc_2 = number
    order.orc.orc_3 = number
    order.orc.orc_5 = "CM"
    if stat:
        order.orc.orc_7 = "^^^^^S"
        order.add_group("ORU_R01_TIMING_QTY").tq1.tq1_1 = "1"
        order.oru_r01_timing_qty.tq1.tq1_9 = "S^Stat^HL70485"
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_2 = number
    obr.obr_3 = number
    procedure = result.procedure or Procedure("Chest radiograph")
    obr.obr_4 = _components(procedure.code_value, procedure.text, procedure.coding_scheme)
    if result.study_datetime is not None:
        obr.obr_7 = _dtm(result.study_datetime)
    obr.obr_22 = _dtm(now)
    status = "C" if result.corrects_earlier else "F"
    obr.obr_25 = status
    if stat:
        obr.obr_27 = "^^^^^S"
    note = order.add_segment("NTE")
    note.nte_1 = "1"
    note.nte_2 = "L"
    note.nte_3 = escape(DISCLAIMER)

    for index, row in enumerate(_observations(result), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(index)
        obx.obx_2 = row.value_type
        obx.obx_3 = _components(row.code, row.text, row.system)
        obx.obx_5 = row.value
        obx.obx_11 = status
        obx.obx_14 = _dtm(now)


def build_oru(
    result: StudyResult,
    header: MessageHeader,
    control_id: str,
    now: datetime | None = None,
) -> str:
    """The ORU^R01 of ``result`` as ER7 text (segments separated by ``\\r``)."""
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    try:
        _fill(message, result, header, control_id, now or datetime.now(UTC))
        message.validate()
        return str(message.to_er7())
    except HL7apyException as exc:
        # only the error's kind: hl7apy's texts may quote a value (a patient's name)
        raise Hl7MessageError(
            f"the ORU^R01 is not valid HL7 {HL7_VERSION} ({type(exc).__name__})"
        ) from exc


def segments(er7: str) -> Sequence[str]:
    """The segments of an ER7 message (for tests and tools)."""
    return [s for s in er7.split("\r") if s]
