"""HL7 results to the RIS: one ORU^R01 per (study, result version, receiver) over MLLP.

Runs inside the results job (``cxr_sender.results``), beside the DICOM destinations, for
the same reasons and with the same pattern:

* **Why in the results job, not an outbox.** The job already exists once per (study,
  result version): the scheduler's completeness job enqueues it when the study completes
  and again for each new version. It already has the retry policy (jittered backoff,
  ``CXR_RESULT_MAX_RETRIES``, ``CXR_RESULT_RETRY_MAX_BACKOFF_S``), the skip of versions a
  study has moved past, and the study's result state. An outbox would need a second
  writer in the completeness transaction, a polling thread, leases and a state of its
  own to show; here "exactly one accepted message per (study, version, receiver)" is the
  DICOM sends' proven three lines: an advisory lock on (study, version, receiver), a
  check for an ``accepted`` row, the attempt recorded in the lock's transaction, and a
  partial unique index as the last line. The study is ``results_sent`` only when every
  DICOM and HL7 destination holds the version, ``results_failed`` when the retries run
  out for any of them.
* **ACKs.** AA (or CA) is done. AE / AR (or CE / CR) are recorded with the receiver's
  reason and retried like a refused C-STORE; no answer within ``CXR_HL7_TIMEOUT_S``, a
  refused or dropped connection, or an answer that is not an ACK of our message are
  recorded and retried too. Every attempt is a ``hl7_sends`` row. A retry carries the
  same message control id, so a receiver whose ACK was lost can drop the duplicate.
* **What is sent** (``cxr_hl7.message``): scored studies with score, flag, threshold,
  interval, finding, model, link, and priority stat when flagged; studies not analysed
  (failed, not eligible, outside the validated population) with a status and the reason.
  Studies that are not chest radiographs at all (every instance refused for its
  modality or body part, none failed) get nothing by default, as for DICOM.

Patient ID and name come from the stored DICOM header into the message and nowhere else:
logs carry the message control id, the study UID, the receiver and the ACK code, never
the ACK's text (a receiver may echo patient data in it) or the message.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable
from datetime import datetime

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine

from cxr_common.errors import ConfigurationError, StorageError
from cxr_common.metrics import NOT_ELIGIBLE_REASON_PATTERNS, reason_category
from cxr_common.model_files import ModelFinding
from cxr_common.settings import ResultSettings
from cxr_common.storage import read_instance
from cxr_db.hl7 import store as hl7_db
from cxr_db.hl7.tables import Hl7SendStatus
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results.store import ResultInputs, SeenInstance
from cxr_hl7 import (
    AckError,
    AnalysisStatus,
    Hl7DeliveryError,
    Hl7Destination,
    Hl7MessageError,
    MessageHeader,
    Patient,
    Procedure,
    StudyResult,
    build_oru,
    exchange,
    message_control_id,
    parse_ack,
    parse_hl7_destinations,
)
from cxr_sender.finding import model_finding

log = logging.getLogger(__name__)

__all__ = ["NOT_CHEST_CATEGORIES", "Hl7Sender", "is_not_chest", "study_result"]

#: Not-eligible reason categories (``cxr_common.metrics``) that mean "not a chest
#: radiograph at all": such studies get no HL7 result by default.
NOT_CHEST_CATEGORIES = frozenset({"modality", "body_part"})


def is_not_chest(inputs: ResultInputs) -> bool:
    """True when no instance was scored or failed and every instance was refused for its
    modality or body part (a CT, an abdomen film): nothing for the RIS to learn."""
    if inputs.best is not None or not inputs.instances:
        return False
    return all(
        i.status is InstanceStatus.NOT_ELIGIBLE
        and reason_category(i.reason, NOT_ELIGIBLE_REASON_PATTERNS) in NOT_CHEST_CATEGORIES
        for i in inputs.instances
    )


def _reasons(instances: tuple[SeenInstance, ...], status: InstanceStatus) -> str:
    found = dict.fromkeys(i.reason or "no reason given" for i in instances if i.status is status)
    return "; ".join(found)[:900]


def _header(storage_uri: str) -> Dataset | None:
    try:
        data = read_instance(storage_uri)
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (StorageError, InvalidDicomError, EOFError, ValueError, KeyError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a corrupt raw element reads as absent
        return None
    text = str(value).strip() if value is not None else ""
    return text or None


def _procedure(ds: Dataset) -> Procedure | None:
    for keyword in ("RequestedProcedureCodeSequence", "ProcedureCodeSequence"):
        try:
            items = ds.get(keyword) or []
        except Exception:  # noqa: BLE001 - unreadable: try the next source
            continue
        for item in items:
            value, meaning = _text(item, "CodeValue"), _text(item, "CodeMeaning")
            if value and meaning:
                return Procedure(meaning, value, _text(item, "CodingSchemeDesignator"))
    for keyword in ("RequestedProcedureDescription", "StudyDescription"):
        text = _text(ds, keyword)
        if text:
            return Procedure(text[:199])
    return None


def _study_datetime(ds: Dataset) -> datetime | None:
    date, time = _text(ds, "StudyDate"), _text(ds, "StudyTime") or "000000"
    if not date or len(date) != 8 or not date.isdigit():
        return None
    digits = "".join(c for c in time.split(".")[0] if c.isdigit()).ljust(6, "0")[:6]
    try:
        return datetime.strptime(date + digits, "%Y%m%d%H%M%S")  # noqa: DTZ007 - DICOM local time
    except ValueError:
        return None


def study_result(
    inputs: ResultInputs,
    header: Dataset,
    finding: Callable[[str], ModelFinding] | None,
    study_url: str | None,
) -> StudyResult:
    """What the ORU^R01 of ``inputs`` says (``corrects_earlier`` False: set per receiver)."""
    failed = any(i.status is InstanceStatus.FAILED for i in inputs.instances)
    which = InstanceStatus.FAILED if failed else InstanceStatus.NOT_ELIGIBLE
    base = StudyResult(
        study_instance_uid=inputs.study_instance_uid,
        accession_number=_text(header, "AccessionNumber"),
        patient=Patient(
            patient_id=_text(header, "PatientID"),
            issuer=_text(header, "IssuerOfPatientID"),
            name=_text(header, "PatientName"),
        ),
        procedure=_procedure(header),
        study_datetime=_study_datetime(header),
        result_version=inputs.result_version,
        corrects_earlier=False,
        status=AnalysisStatus.FAILED if failed else AnalysisStatus.NOT_ELIGIBLE,
        reason=_reasons(inputs.instances, which) or None,
        study_url=study_url,
    )
    best = inputs.best
    if best is None:
        return base
    scored = dataclasses.replace(
        base,
        model_name=best.model_name,
        model_version=best.model_version,
        finding=finding(best.model_version) if finding else None,
    )
    if not best.triage:
        return dataclasses.replace(
            scored,
            status=AnalysisStatus.OUTSIDE_POPULATION,
            reason=best.population_reason or "outside the model's validated population",
        )
    interval = (
        None
        if best.score_lower is None or best.score_upper is None
        else (best.score_lower, best.score_upper)
    )
    return dataclasses.replace(
        scored,
        status=AnalysisStatus.SCORED,
        reason=None,
        score=best.probability,
        threshold=best.threshold,
        flagged=best.flagged,
        score_interval=interval,
    )


class Hl7Sender:
    """The HL7 destinations of a results process and how to reach them."""

    def __init__(
        self, engine: Engine, settings: ResultSettings, *, send_not_chest: bool = False
    ) -> None:
        self.engine = engine
        self.destinations: tuple[Hl7Destination, ...] = parse_hl7_destinations(
            settings.hl7_destinations
        )
        self.header = MessageHeader(
            sending_application=settings.hl7_sending_application,
            sending_facility=settings.hl7_sending_facility,
            receiving_application=settings.hl7_receiving_application,
            receiving_facility=settings.hl7_receiving_facility,
        )
        self.timeout_s = settings.hl7_timeout_s
        self.base_url = settings.web_base_url.strip().rstrip("/")
        self.send_not_chest = send_not_chest

    def _result(self, inputs: ResultInputs) -> StudyResult:
        # the study's first instance fixed its patient (cxr_ingest.identity): its header
        # names the patient, as the DICOM result objects do
        uris = [i.storage_uri for i in inputs.instances]
        header = next((h for h in map(_header, dict.fromkeys(uris)) if h is not None), None)
        if header is None:
            raise Hl7MessageError("no instance of the study has a readable header")

        def finding(version: str) -> ModelFinding:
            try:
                return model_finding(self.engine, version)
            except ConfigurationError as exc:
                raise Hl7MessageError(str(exc)) from exc

        url = f"{self.base_url}/studies/{inputs.study_instance_uid}" if self.base_url else None
        return study_result(inputs, header, finding, url)

    def deliver(self, inputs: ResultInputs) -> list[str]:
        """Deliver ``inputs``' result version to every receiver that has not accepted it;
        returns the receivers still without it (retry later). Raises ``Hl7MessageError``
        when the message cannot be built (recorded as the first receiver's attempt)."""
        if not self.destinations:
            return []
        if is_not_chest(inputs) and not self.send_not_chest:
            log.info(
                "study %s v%d is not a chest radiograph: no HL7 result",
                inputs.study_instance_uid,
                inputs.result_version,
            )
            return []
        built: list[StudyResult] = []

        def build() -> StudyResult:
            if not built:
                built.append(self._result(inputs))
            return built[0]

        return [str(d) for d in self.destinations if not self._send_one(inputs, d, build)]

    def _send_one(
        self,
        inputs: ResultInputs,
        destination: Hl7Destination,
        build: Callable[[], StudyResult],
    ) -> bool:
        name = str(destination)
        uid, version = inputs.study_instance_uid, inputs.result_version
        control_id = message_control_id(uid, version)
        with hl7_db.send_lock(self.engine, inputs.study_id, version, name) as conn:
            if conn is None:
                log.info(
                    "HL7 %s of %s v%d to %s is being sent by another process",
                    control_id,
                    uid,
                    version,
                    name,
                )
                return False
            if hl7_db.already_accepted(conn, inputs.study_id, version, name):
                return True
            corrects = (
                hl7_db.last_accepted_version(conn, inputs.study_id, name, version) is not None
            )
            ack_code: str | None = None
            error: str | None
            cannot_build: Hl7MessageError | None = None
            try:
                result = dataclasses.replace(build(), corrects_earlier=corrects)
                message = build_oru(result, self.header, control_id)
            except Hl7MessageError as exc:  # recorded, then raised once the row is committed
                cannot_build = exc
                accepted, error = False, f"message cannot be built: {exc}"
            else:
                try:
                    answer = exchange(destination, message, self.timeout_s)
                    ack = parse_ack(answer, control_id)
                except Hl7DeliveryError as exc:
                    accepted, error = False, exc.reason
                except AckError as exc:
                    accepted, error = False, f"answer is not an ACK of this message: {exc}"
                else:
                    accepted, ack_code = ack.accepted, ack.code.value
                    error = (
                        None if accepted else f"{ack.code.value}: {ack.text or 'no reason given'}"
                    )
            attempt = hl7_db.record_attempt(
                conn,
                hl7_db.Hl7Attempt(
                    study_id=inputs.study_id,
                    result_version=version,
                    destination=name,
                    status=Hl7SendStatus.ACCEPTED if accepted else Hl7SendStatus.FAILED,
                    message_control_id=control_id,
                    ack_code=ack_code,
                    error=error,
                ),
            )
        # the ACK's text stays in the database: a receiver may echo patient data in it
        log.info(
            "HL7 %s of %s v%d to %s, attempt %d: %s",
            control_id,
            uid,
            version,
            name,
            attempt,
            "accepted" if accepted else f"not accepted ({ack_code or error})",
        )
        if cannot_build is not None:
            raise cannot_build
        return accepted
