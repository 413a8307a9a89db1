"""The results task: file a complete study's result into PACS over C-STORE or STOW-RS.

For one (study, result version) job from the results queue (enqueued by the listener's
completeness job):

* a study with at least one scored instance gets the heatmap **Secondary Capture** of its
  highest-scoring instance (the heatmap read back from the overlay the worker stored,
  drawn again over the radiograph at its own resolution up to 2048 px: the model never
  runs here), the heatmap as data (a FRACTIONAL **Segmentation** at the source's Rows x
  Columns) and a TID 1500 **Comprehensive 3D SR** with one measurement group per scored
  instance (score, threshold, flag, model and calibration, population, references,
  disclaimer). Only the active model's predictions count, never a shadow model's; an
  instance whose score triaged comes before one outside the validated population, whose
  shadow score the objects then head "OUTSIDE VALIDATED POPULATION: score not used for
  triage" with the reason, and show with no flag;
* a chest radiograph study with no scored instance (failed, or not eligible: a lateral
  view, too small) gets the same TID 1500 SR saying it was **not analysed** and why;
* a study with no chest radiograph at all (a CT, an abdomen film) gets nothing, unless
  ``CXR_RESULT_NOT_ELIGIBLE_REPORT`` asks for the not-analysed SR;

and they go to every destination of ``CXR_RESULT_DESTINATIONS`` (none configured: nothing
is sent and the study stays ``complete``), from our calling AE title, or by STOW-RS to a
DICOMweb base URL (``cxr_results.stow``, with ``CXR_RESULT_DICOMWEB_TOKEN`` or basic auth),
each destination getting its selection (``[sc+sr+seg]``, default all; the SR references
only what that destination gets): the same attempt records, idempotency and retries.
Every object carries the study's patient, as the study's first instance names it (ingest
refuses an instance of another patient: ``cxr_ingest.identity``), never a later
instance's spelling of it.

Idempotent per (study, result version, destination): under an advisory lock the task
checks whether it was stored already, sends, and records the attempt (status codes, error)
in ``result_sends``; a redelivered or duplicate job finds everything sent and does
nothing. The UIDs are derived from (root, study, version), so a resend after an ambiguous
failure overwrites on the PACS rather than duplicating. A newer result version supersedes
the older one by cxr_results' rule (same series, new SOP Instance UIDs, InstanceNumber =
version, the SR names the SR it replaces). A job for a version the study has moved past
(reopened by a late instance) is skipped: the newer version's job follows.

Any destination not yet stored makes the task retry with jittered exponential backoff
(``cxr_queue.retries``, the scoring task's policy with the results cap
``CXR_RESULT_RETRY_MAX_BACKOFF_S``; ``AssociationError`` is a ``TransientError``); after
the last retry the study is ``results_failed``. When every destination stored its
objects it is ``results_sent``.
Logs name UIDs and destinations, never patient data.
"""

from __future__ import annotations

import copy
import enum
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from celery import Celery, Task
from pydantic import SecretStr, ValidationError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_common.errors import ConfigurationError, StorageError, TransientError
from cxr_common.model_files import ModelFinding
from cxr_common.settings import ResultSettings
from cxr_common.storage import read_instance
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results import store as results_db
from cxr_db.results.states import ResultState, SendStatus
from cxr_hl7 import Hl7Error
from cxr_imaging import ImagingError, decode_dataset, is_chest_radiograph
from cxr_imaging.overlay import has_burned_in_annotation, heat_from_overlay
from cxr_queue import RESULTS_TASK, ResultsJob
from cxr_queue.retries import RetryPolicy, retries_so_far, retry_later
from cxr_results import (
    AnalysedImage,
    AnalysisStatus,
    AnyDestination,
    AssociationError,
    DicomwebDestination,
    ResultObject,
    ResultObjectError,
    ResultSummary,
    ResultUids,
    SendOutcome,
    Timeouts,
    build_heatmap_segmentation,
    build_not_analysed_report,
    build_secondary_capture,
    build_structured_report,
    client_tls_context,
    load_or_create_uid_root,
    overlay_at_source_resolution,
    overlay_from_png,
    parse_destinations,
    result_uids,
    send_objects,
    stow,
)
from cxr_sender.finding import model_finding
from cxr_sender.hl7 import Hl7Sender

log = logging.getLogger(__name__)

__all__ = ["ResultsOutcome", "ResultsRuntime", "register_results_task", "retry_policy"]


class ResultsOutcome(enum.StrEnum):
    """What one results job did (the task's return value)."""

    SENT = "sent"
    """Every destination holds this result version (now or from an earlier attempt)."""
    NO_DESTINATION = "no_destination"
    """``CXR_RESULT_DESTINATIONS`` is empty: nothing is sent, the study stays complete."""
    SUPERSEDED = "superseded"
    """The study was reopened (a newer result version follows) or is unknown."""
    FAILED = "failed"
    """Retries exhausted or the objects cannot be built: the study is results_failed."""
    INVALID = "invalid"
    """The payload did not validate; the job was dropped."""
    NOT_CHEST = "not_chest"
    """No instance is a chest radiograph (e.g. a CT): nothing is sent unless
    ``CXR_RESULT_NOT_ELIGIBLE_REPORT`` asks for a not-analysed report; the study stays
    complete."""


class _NotDone(TransientError):
    """Some destination has not stored this result version yet (retry later)."""


class _CannotBuild(Exception):
    """The result objects cannot be built (missing or unreadable instance, bad data)."""


@dataclass(frozen=True)
class _Objects:
    """What one destination gets of one result version (its selection applied)."""

    datasets: tuple[Dataset, ...]
    sc_sop_instance_uid: str | None
    sr_sop_instance_uid: str
    seg_sop_instance_uid: str | None = None


@dataclass(frozen=True)
class _Scored:
    """The parts of a scored result built once per job; the SR is built per destination
    (it references only the objects that destination gets)."""

    uids: ResultUids
    source: Dataset
    summary: ResultSummary
    sc: Dataset
    seg: Dataset | None
    others: tuple[AnalysedImage, ...]


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def retry_policy(max_retries: int, max_backoff_s: float) -> RetryPolicy:
    """Results retries: 1, 2, 4, ... s (jittered) up to ``max_backoff_s``."""
    return RetryPolicy(max_retries=max_retries, max_backoff_s=max_backoff_s)


def _header(storage_uri: str, *, pixels: bool = False) -> Dataset:
    try:
        data = read_instance(storage_uri)
    except StorageError as exc:
        raise _CannotBuild(f"stored instance cannot be read: {exc}") from exc
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
        raise _CannotBuild(f"stored instance is not readable DICOM ({type(exc).__name__})") from exc


#: The patient attributes every result object carries from the study's first instance
#: (the one that fixed the study's patient, ``cxr_ingest.identity``).
STUDY_PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)


def _with_study_patient(source: Dataset, patient: Dataset) -> Dataset:
    """``source`` with the study's patient (``patient``: the first instance's header): the
    objects carry only the study's patient, written as its first instance wrote it."""
    for keyword in STUDY_PATIENT_KEYWORDS:
        if keyword in patient:
            source[keyword] = copy.deepcopy(patient[keyword])
        elif keyword in source:
            del source[keyword]
    return source


def _reason(instances: Sequence[results_db.SeenInstance], status: InstanceStatus) -> str:
    reasons = dict.fromkeys(i.reason or "no reason given" for i in instances if i.status is status)
    return "; ".join(reasons)[:900]


class ResultsRuntime:
    """What a results process holds: engine, destinations, our AE title and UID root."""

    def __init__(self, engine: Engine, settings: ResultSettings) -> None:
        self.engine = engine
        self.destinations: tuple[AnyDestination, ...] = parse_destinations(
            settings.result_destinations
        )
        self.dicomweb_auth = stow.DicomwebAuth(
            token=_secret(settings.result_dicomweb_token),
            username=settings.result_dicomweb_username,
            password=_secret(settings.result_dicomweb_password),
        )
        self.calling_ae_title = settings.result_calling_ae_title
        self.not_eligible_report = settings.result_not_eligible_report
        self.timeouts = Timeouts(
            connection_s=settings.result_timeout_s,
            acse_s=settings.result_timeout_s,
            dimse_s=max(60.0, settings.result_timeout_s),
            network_s=max(60.0, settings.result_timeout_s),
        )
        self.tls = (
            client_tls_context(
                settings.result_tls_ca, settings.result_tls_cert, settings.result_tls_key
            )
            if settings.result_tls_ca is not None
            else None
        )
        self._uid_root_file = settings.uid_root_file
        self._uid_root_setting = settings.uid_root
        self._uid_root: str | None = None
        # HL7 to the RIS, beside PACS (cxr_sender.hl7); non-chest studies follow the same rule.
        self.hl7 = Hl7Sender(engine, settings, send_not_chest=settings.result_not_eligible_report)

    @property
    def uid_root(self) -> str:
        """Resolved on first use: ``CXR_UID_ROOT``, or the generated root in the data folder
        shared with the listener (made by whichever starts first; the first writer wins)."""
        if self._uid_root is None:
            self._uid_root = load_or_create_uid_root(self._uid_root_file, self._uid_root_setting)
        return self._uid_root

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ objects

    @staticmethod
    def _study_patient(inputs: results_db.ResultInputs) -> Dataset | None:
        """The header of the study's first instance (whose patient every later instance
        had to match at ingest), or None when it cannot be read (the others match it)."""
        for seen in inputs.instances[:1]:
            try:
                return _header(seen.storage_uri)
            except _CannotBuild:
                log.warning("study %s: first instance unreadable", inputs.study_instance_uid)
        return None

    def _summary(
        self, scored: results_db.ScoredInstance, findings: dict[str, ModelFinding]
    ) -> ResultSummary:
        if scored.model_version not in findings:
            try:
                findings[scored.model_version] = model_finding(self.engine, scored.model_version)
            except ConfigurationError as exc:
                raise _CannotBuild(str(exc)) from exc
        return ResultSummary(
            score=scored.probability,
            threshold=scored.threshold,
            flagged=scored.flagged,
            model_name=scored.model_name,
            model_version=scored.model_version,
            weights_sha256=scored.weights_sha256,
            calibration_version=scored.calibration_version or "none",
            finding=findings[scored.model_version],
            population=scored.population,
            population_reason=scored.population_reason,
            triage=scored.triage,
            score_interval=None
            if scored.score_lower is None or scored.score_upper is None
            else (scored.score_lower, scored.score_upper),
        )

    @staticmethod
    def _as_study_patient(header: Dataset, patient: Dataset | None) -> Dataset:
        return header if patient is None else _with_study_patient(header, patient)

    def _build_scored(self, inputs: results_db.ResultInputs) -> _Scored:
        """The SC (at the radiograph's resolution), the heatmap Segmentation and what the
        SR needs, for a study with a scored instance."""
        uids = result_uids(self.uid_root, inputs.study_instance_uid, inputs.result_version)
        best = inputs.best
        if best is None:
            raise _CannotBuild("no scored instance")
        findings: dict[str, ModelFinding] = {}
        summary = self._summary(best, findings)
        patient = self._study_patient(inputs)
        source = self._as_study_patient(_header(best.storage_uri, pixels=True), patient)
        neutral = has_burned_in_annotation(source)
        pixels: npt.NDArray[np.generic] | None = None
        try:
            pixels = decode_dataset(source).pixels
        except ImagingError as exc:
            if best.heatmap_png is None:
                raise _CannotBuild(f"scored image cannot be decoded again: {exc}") from exc
            log.warning(
                "scored image %s cannot be decoded again (%s): the SC shows the stored overlay",
                best.sop_instance_uid,
                exc,
            )
        picture: npt.NDArray[np.generic]
        seg: Dataset | None = None
        if best.heatmap_png is not None:
            overlay = overlay_from_png(best.heatmap_png)
            picture = (
                overlay
                if pixels is None
                else overlay_at_source_resolution(pixels, overlay, neutral_field=neutral)
            )
            seg = build_heatmap_segmentation(source, heat_from_overlay(overlay), summary, uids)
        elif pixels is not None:  # heatmaps switched off: the radiograph itself
            picture = pixels
        else:  # unreachable: without an overlay a decode error was raised above
            raise _CannotBuild("scored image cannot be decoded again")
        sc = build_secondary_capture(source, picture, summary, uids)
        others: list[AnalysedImage] = []
        for scored in inputs.scored:
            if scored.sop_instance_uid == best.sop_instance_uid:
                continue
            try:
                others.append(
                    AnalysedImage(
                        self._as_study_patient(_header(scored.storage_uri), patient),
                        self._summary(scored, findings),
                    )
                )
            except _CannotBuild:
                log.warning("scored instance %s left out of the SR", scored.sop_instance_uid)
        return _Scored(uids, source, summary, sc, seg, tuple(others))

    def _build(
        self,
        inputs: results_db.ResultInputs,
        supersedes: int | None,
        wanted: frozenset[ResultObject],
        scored: Callable[[], _Scored],
    ) -> _Objects:
        """The objects of ``wanted`` for one destination (the SR references only those)."""
        if inputs.best is not None:
            parts = scored()
            sc = parts.sc if ResultObject.SC in wanted else None
            seg = parts.seg if ResultObject.SEG in wanted else None
            sr = build_structured_report(
                parts.source,
                parts.summary,
                parts.uids,
                sc,
                segmentation=seg,
                others=parts.others,
                supersedes_version=supersedes,
            )
            datasets = [d for d in (sc, seg) if d is not None]
            if ResultObject.SR in wanted:
                datasets.append(sr)
            return _Objects(
                tuple(datasets),
                str(sc.SOPInstanceUID) if sc is not None else None,
                str(sr.SOPInstanceUID),
                str(seg.SOPInstanceUID) if seg is not None else None,
            )
        uids = result_uids(self.uid_root, inputs.study_instance_uid, inputs.result_version)
        if ResultObject.SR not in wanted:  # a not-analysed result is an SR only
            return _Objects((), None, uids.sr_sop_instance_uid)
        failed = [i for i in inputs.instances if i.status is InstanceStatus.FAILED]
        status = AnalysisStatus.FAILED if failed else AnalysisStatus.NOT_ELIGIBLE
        reason = _reason(
            inputs.instances,
            InstanceStatus.FAILED if failed else InstanceStatus.NOT_ELIGIBLE,
        )
        patient = self._study_patient(inputs)
        headers = [self._as_study_patient(h, patient) for h in self._readable_headers(inputs)]
        if not headers:
            raise _CannotBuild("no instance of the study has a readable header")
        sr = build_not_analysed_report(
            headers, status, reason or "not analysed", uids, supersedes_version=supersedes
        )
        return _Objects((sr,), None, str(sr.SOPInstanceUID))

    @staticmethod
    def _readable_headers(inputs: results_db.ResultInputs) -> list[Dataset]:
        headers = []
        for seen in inputs.instances:
            try:
                headers.append(_header(seen.storage_uri))
            except _CannotBuild:
                continue  # e.g. the unreadable file that failed: listed by the others
        return headers

    def _not_a_chest_study(self, inputs: results_db.ResultInputs) -> bool:
        """True when nothing was scored and no readable instance is a chest radiograph
        (by modality and body part) and the setting does not ask for a report anyway."""
        if inputs.best is not None or self.not_eligible_report:
            return False
        headers = self._readable_headers(inputs)
        return bool(headers) and not any(is_chest_radiograph(h) for h in headers)

    # ------------------------------------------------------------------ sending

    def _deliver(
        self, destination: AnyDestination, datasets: Sequence[Dataset]
    ) -> list[SendOutcome]:
        """C-STORE or STOW-RS, by the kind of destination: one outcome per data set."""
        if isinstance(destination, DicomwebDestination):
            return stow.send_objects(
                destination, datasets, self.dicomweb_auth, self.timeouts.network_s
            )
        return send_objects(destination, datasets, self.calling_ae_title, self.timeouts, self.tls)

    def _send_one(
        self,
        inputs: results_db.ResultInputs,
        destination: AnyDestination,
        build: Callable[[int | None, frozenset[ResultObject]], _Objects],
    ) -> bool:
        """Store the objects on ``destination`` unless already there; True when stored."""
        name = str(destination)
        with results_db.send_lock(
            self.engine, inputs.study_id, inputs.result_version, name
        ) as conn:
            if conn is None:
                log.info(
                    "results of %s v%d to %s are being sent by another process",
                    inputs.study_instance_uid,
                    inputs.result_version,
                    name,
                )
                return False
            if results_db.already_sent(conn, inputs.study_id, inputs.result_version, name):
                return True
            supersedes = results_db.last_sent_version(
                conn, inputs.study_id, name, inputs.result_version
            )
            objects = build(supersedes, destination.objects)
            if not objects.datasets:
                log.info(
                    "results of %s v%d: nothing for %s (it takes %s)",
                    inputs.study_instance_uid,
                    inputs.result_version,
                    name,
                    "+".join(sorted(destination.objects)),
                )
                return True
            error: str | None
            try:
                outcomes = self._deliver(destination, objects.datasets)
            except AssociationError as exc:
                outcomes, error = [], exc.reason
            else:
                failed = [o for o in outcomes if not o.stored]
                error = "; ".join(f"{o.sop_instance_uid}: {o.reason}" for o in failed) or None
            stored = bool(outcomes) and all(o.stored for o in outcomes)
            by_uid: dict[str, SendOutcome] = {o.sop_instance_uid: o for o in outcomes}
            sc = by_uid.get(objects.sc_sop_instance_uid or "")
            sr = by_uid.get(objects.sr_sop_instance_uid)
            seg = by_uid.get(objects.seg_sop_instance_uid or "")
            attempt = results_db.record_attempt(
                conn,
                results_db.Attempt(
                    study_id=inputs.study_id,
                    result_version=inputs.result_version,
                    destination=name,
                    status=SendStatus.SENT if stored else SendStatus.FAILED,
                    sc_sop_instance_uid=objects.sc_sop_instance_uid,
                    sr_sop_instance_uid=objects.sr_sop_instance_uid,
                    sc_status=sc.status if sc else None,
                    sr_status=sr.status if sr else None,
                    error=error,
                    seg_sop_instance_uid=objects.seg_sop_instance_uid,
                    seg_status=seg.status if seg else None,
                ),
            )
        log.info(
            "results of %s v%d to %s, attempt %d: %s",
            inputs.study_instance_uid,
            inputs.result_version,
            name,
            attempt,
            "stored" if stored else f"not stored ({error})",
        )
        return stored

    def process(self, job: ResultsJob) -> ResultsOutcome:
        """Send the job's result version to every destination not holding it yet.

        Raises ``TransientError`` while some destination has not stored it."""
        try:
            return self._process(job)
        except (OperationalError, DBAPIError) as exc:
            raise TransientError("database unavailable") from exc

    def _process(self, job: ResultsJob) -> ResultsOutcome:
        inputs = results_db.result_inputs(self.engine, job.study_id)
        if (
            inputs is None
            or inputs.study_instance_uid != job.study_instance_uid
            or inputs.result_version != job.result_version
            or inputs.result_state is ResultState.RECEIVING
        ):
            log.info(
                "results job for %s v%d skipped: the study moved on or is unknown",
                job.study_instance_uid,
                job.result_version,
            )
            return ResultsOutcome.SUPERSEDED
        if not self.destinations and not self.hl7.destinations:
            log.info(
                "study %s v%d complete; no result destination configured: nothing sent",
                job.study_instance_uid,
                job.result_version,
            )
            return ResultsOutcome.NO_DESTINATION
        if self._not_a_chest_study(inputs):
            log.info(
                "study %s v%d has no chest radiograph: no result sent "
                "(CXR_RESULT_NOT_ELIGIBLE_REPORT=true files a not-analysed report)",
                job.study_instance_uid,
                job.result_version,
            )
            return ResultsOutcome.NOT_CHEST
        built: dict[tuple[int | None, frozenset[ResultObject]], _Objects] = {}
        parts: list[_Scored] = []

        def scored() -> _Scored:
            if not parts:
                parts.append(self._build_scored(inputs))
            return parts[0]

        def build(supersedes: int | None, wanted: frozenset[ResultObject]) -> _Objects:
            key = (supersedes, wanted)
            if key not in built:
                built[key] = self._build(inputs, supersedes, wanted, scored)
            return built[key]

        missing: list[object] = list(self.hl7.deliver(inputs))
        missing += [d for d in self.destinations if not self._send_one(inputs, d, build)]
        if missing:
            raise _NotDone(
                f"results of {job.study_instance_uid} v{job.result_version} not stored on "
                + ", ".join(map(str, missing))
            )
        results_db.set_result_state(
            self.engine, job.study_id, job.result_version, ResultState.RESULTS_SENT
        )
        return ResultsOutcome.SENT

    def give_up(self, job: ResultsJob, why: str) -> None:
        """The last retry failed, or the objects cannot be built: results_failed."""
        log.error("results of %s v%d failed: %s", job.study_instance_uid, job.result_version, why)
        results_db.set_result_state(
            self.engine, job.study_id, job.result_version, ResultState.RESULTS_FAILED
        )


def register_results_task(
    app: Celery,
    runtime: Callable[[], ResultsRuntime],
    max_retries: int,
    max_backoff_s: int,
) -> Task:
    """Register ``cxr.send_results`` on ``app``; ``runtime`` returns the loaded runtime."""
    policy = retry_policy(max_retries, max_backoff_s)

    @app.task(  # type: ignore[untyped-decorator]
        name=RESULTS_TASK, bind=True, acks_late=True, max_retries=max_retries
    )
    def send_results(self: Task, job: dict[str, Any]) -> str:
        try:
            parsed = ResultsJob.model_validate(job)
        except ValidationError:
            log.error("dropped a results job with an invalid payload (fields: %s)", sorted(job))
            return ResultsOutcome.INVALID.value
        rt = runtime()
        try:
            return rt.process(parsed).value
        except (_CannotBuild, ResultObjectError, Hl7Error) as exc:
            rt.give_up(parsed, f"result objects cannot be built: {exc}")
            return ResultsOutcome.FAILED.value
        except TransientError as exc:
            retries = retries_so_far(self)
            if policy.exhausted(retries):
                rt.give_up(parsed, f"gave up after {retries + 1} attempts: {exc}")
                return ResultsOutcome.FAILED.value
            log.warning("results not sent yet, retry %d: %s", retries + 1, exc)
            retry_later(self, exc, policy)
        except Exception as exc:
            log.exception("unexpected error sending the results of study %d", parsed.study_id)
            rt.give_up(parsed, f"internal error ({type(exc).__name__}); see the logs")
            return ResultsOutcome.FAILED.value

    return send_results
