"""The results task: file a complete study's result into PACS over C-STORE.

For one (study, result version) job from the results queue (enqueued by the listener's
completeness job):

* a study with at least one scored instance gets the heatmap **Secondary Capture** of its
  highest-scoring instance (the overlay the worker stored with the prediction: the model
  never runs here) and a **Comprehensive SR** (score, threshold, flag, model and
  calibration, population, references, disclaimer). Only the active model's predictions
  count, never a shadow model's; an instance whose score triaged comes before one outside
  the validated population, whose shadow score the objects then head "OUTSIDE VALIDATED
  POPULATION: score not used for triage" with the reason, and show with no flag;
* a study with no scored instance (not eligible, or failed) gets a short **not-analysed
  SR** that says so and why;

and both go to every destination of ``CXR_RESULT_DESTINATIONS`` (none configured: nothing
is sent and the study stays ``complete``), from our calling AE title.

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
the last retry the study is ``results_failed``. When every destination stored both
objects it is ``results_sent``.
Logs name UIDs and destinations, never patient data.
"""

from __future__ import annotations

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
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_common.errors import ConfigurationError, StorageError, TransientError
from cxr_common.settings import ResultSettings
from cxr_common.storage import read_instance
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results import store as results_db
from cxr_db.results.states import ResultState, SendStatus
from cxr_imaging import ImagingError, decode_dataset
from cxr_queue import RESULTS_TASK, ResultsJob
from cxr_queue.retries import RetryPolicy, retries_so_far, retry_later
from cxr_results import (
    AnalysisStatus,
    AssociationError,
    Destination,
    ResultObjectError,
    ResultSummary,
    SendOutcome,
    Timeouts,
    build_not_analysed_report,
    build_secondary_capture,
    build_structured_report,
    client_tls_context,
    load_or_create_uid_root,
    overlay_from_png,
    parse_destinations,
    result_uids,
    send_objects,
)
from cxr_sender.finding import model_finding

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


class _NotDone(TransientError):
    """Some destination has not stored this result version yet (retry later)."""


class _CannotBuild(Exception):
    """The result objects cannot be built (missing or unreadable instance, bad data)."""


@dataclass(frozen=True)
class _Objects:
    datasets: tuple[Dataset, ...]
    sc_sop_instance_uid: str | None
    sr_sop_instance_uid: str


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


def _reason(instances: Sequence[results_db.SeenInstance], status: InstanceStatus) -> str:
    reasons = dict.fromkeys(i.reason or "no reason given" for i in instances if i.status is status)
    return "; ".join(reasons)[:900]


class ResultsRuntime:
    """What a results process holds: engine, destinations, our AE title and UID root."""

    def __init__(self, engine: Engine, settings: ResultSettings) -> None:
        self.engine = engine
        self.destinations: tuple[Destination, ...] = parse_destinations(
            settings.result_destinations
        )
        self.calling_ae_title = settings.result_calling_ae_title
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

    def _build(self, inputs: results_db.ResultInputs, supersedes: int | None) -> _Objects:
        uids = result_uids(self.uid_root, inputs.study_instance_uid, inputs.result_version)
        best = inputs.best
        if best is not None:
            try:
                finding = model_finding(self.engine, best.model_version)
            except ConfigurationError as exc:
                raise _CannotBuild(str(exc)) from exc
            summary = ResultSummary(
                score=best.probability,
                threshold=best.threshold,
                flagged=best.flagged,
                model_name=best.model_name,
                model_version=best.model_version,
                weights_sha256=best.weights_sha256,
                calibration_version=best.calibration_version or "none",
                finding=finding,
                population=best.population,
                population_reason=best.population_reason,
                triage=best.triage,
                score_interval=None
                if best.score_lower is None or best.score_upper is None
                else (best.score_lower, best.score_upper),
            )
            picture: npt.NDArray[np.generic]
            if best.heatmap_png is not None:
                source = _header(best.storage_uri)
                picture = overlay_from_png(best.heatmap_png)
            else:  # heatmaps switched off: the radiograph itself, decoded again
                source = _header(best.storage_uri, pixels=True)
                try:
                    picture = decode_dataset(source).pixels
                except ImagingError as exc:
                    raise _CannotBuild(f"scored image cannot be decoded again: {exc}") from exc
            sc = build_secondary_capture(source, picture, summary, uids)
            sr = build_structured_report(source, summary, uids, sc, supersedes_version=supersedes)
            return _Objects((sc, sr), str(sc.SOPInstanceUID), str(sr.SOPInstanceUID))
        failed = [i for i in inputs.instances if i.status is InstanceStatus.FAILED]
        status = AnalysisStatus.FAILED if failed else AnalysisStatus.NOT_ELIGIBLE
        reason = _reason(
            inputs.instances,
            InstanceStatus.FAILED if failed else InstanceStatus.NOT_ELIGIBLE,
        )
        headers = []
        for seen in inputs.instances:
            try:
                headers.append(_header(seen.storage_uri))
            except _CannotBuild:
                continue  # e.g. the unreadable file that failed: listed by the others
        if not headers:
            raise _CannotBuild("no instance of the study has a readable header")
        sr = build_not_analysed_report(
            headers, status, reason or "not analysed", uids, supersedes_version=supersedes
        )
        return _Objects((sr,), None, str(sr.SOPInstanceUID))

    # ------------------------------------------------------------------ sending

    def _send_one(
        self,
        inputs: results_db.ResultInputs,
        destination: Destination,
        build: Callable[[int | None], _Objects],
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
            objects = build(supersedes)
            error: str | None
            try:
                outcomes = send_objects(
                    destination, objects.datasets, self.calling_ae_title, self.timeouts, self.tls
                )
            except AssociationError as exc:
                outcomes, error = [], exc.reason
            else:
                failed = [o for o in outcomes if not o.stored]
                error = "; ".join(f"{o.sop_instance_uid}: {o.reason}" for o in failed) or None
            stored = bool(outcomes) and all(o.stored for o in outcomes)
            by_uid: dict[str, SendOutcome] = {o.sop_instance_uid: o for o in outcomes}
            sc = by_uid.get(objects.sc_sop_instance_uid or "")
            sr = by_uid.get(objects.sr_sop_instance_uid)
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
        if not self.destinations:
            log.info(
                "study %s v%d complete; no result destination configured: nothing sent",
                job.study_instance_uid,
                job.result_version,
            )
            return ResultsOutcome.NO_DESTINATION
        built: dict[int | None, _Objects] = {}

        def build(supersedes: int | None) -> _Objects:
            if supersedes not in built:
                built[supersedes] = self._build(inputs, supersedes)
            return built[supersedes]

        missing = [d for d in self.destinations if not self._send_one(inputs, d, build)]
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
        except (_CannotBuild, ResultObjectError) as exc:
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
