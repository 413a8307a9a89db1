"""One instance from storage to a database row: decode, eligibility, batched scoring,
Grad-CAM overlay, prediction upsert. The scoring rule and the heatmap (with its
burned-in annotation rule) are :mod:`cxr_model`'s, shared with ``predict``.

The models come from the registry (``worker.registry``): the active model's score triages
unless the instance is outside its validated population (``CXR_POPULATION_POLICY``), and
shadow models score the same batch, stored under their version, never used for priority.
The population is decided by the header and by the image: the same forward pass that gives
the score gives the pooled features, whose distance from the model's training distribution
(``cxr_model.distribution``, shipped as ``ood.json``), or an inversion detector on the same
features (a greyscale-inverted film), puts an image unlike the validated population outside
whatever its header says; the instance row records which check decided (header, image,
both) and the reason which image statistic (distance, inversion) and what to do.

Errors are sorted at this boundary: ``TransientError`` (database or storage briefly
unavailable) is retried by the task; anything about the file itself is permanent and
ends as a ``failed`` or ``not_eligible`` row with a reason a person can act on.

Claims and poison (issue 12): a job claims its row with a lease (``LeaseKeeper`` renews
it) and gives the claim back on a transient error; a row claimed ``max_attempts`` times
without finishing (the process died each time: an OOM kill, a crash) is failed at the
next claim. Each job reads its file through the decode limits
(``cxr_imaging.limits.read_checked_dataset``: declared and inflated sizes checked before
any decode) and refuses a blank or constant frame, all in its own thread before
batching, so a poison file fails alone; only tensors of decoded images meet in a batch,
and every wait on a batch is bounded (``batch_timeout_s``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_common.errors import CxrTriageError, InstanceMissingError, StorageError, TransientError
from cxr_common.population import PopulationPolicy, UnknownAge
from cxr_common.storage import read_instance
from cxr_db.instances import writes as repo
from cxr_imaging import ImagingError, NotAnImageError, check_eligibility, decode_dataset
from cxr_imaging.limits import (
    DecodeLimits,
    InputRefusedError,
    check_not_blank,
    read_checked_dataset,
)
from cxr_queue import ScoreJob
from worker.batching import Batcher, BatchInfo
from worker.leases import LeaseKeeper, Progress
from worker.metrics import timed_batch
from worker.outcomes import FailureCode, JobOutcome, Outcome, failure_reason
from worker.registry import ScoreItem, ServedModels, SetResult, prepare, score_items

if TYPE_CHECKING:
    from cxr_model import Calibration, ScoringModel
    from worker.registry import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class _JobState:
    decoded: bool = False


class DatabaseUnavailableError(TransientError):
    """Postgres could not be reached. After the last retry the job leaves the row pending
    (queued, or processing with a lease that lapses): the listener's reconciler
    re-enqueues it once the database is back. No 'failed' row for an outage."""


@dataclass(frozen=True)
class Reliability:
    """How a runtime claims, bounds and refuses (``WorkerSettings`` fields)."""

    lease_ttl_s: float = 20.0
    lease_renew_s: float = 5.0
    max_attempts: int = 3
    batch_timeout_s: float = 120.0
    task_time_limit_s: float = 300.0
    limits: DecodeLimits = DecodeLimits()


class ScoringRuntime:
    """Everything a worker process loads once: engine, served models, batcher, and the
    lease renewer."""

    def __init__(
        self,
        engine: Engine,
        models: ServedModels,
        *,
        concurrency: int,
        batch_max_size: int,
        batch_max_wait_s: float,
        heatmaps: bool = True,
        population_policy: PopulationPolicy = PopulationPolicy.ENFORCE,
        unknown_age: UnknownAge = UnknownAge.IN_SCOPE,
        reliability: Reliability | None = None,
    ) -> None:
        self.engine = engine
        self.models = models
        self.heatmaps = heatmaps
        self.population_policy = population_policy
        self.unknown_age = unknown_age
        self.concurrency = concurrency
        self.reliability = reliability or Reliability()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.progress = Progress()
        self.leases = LeaseKeeper(
            engine,
            self.worker_id,
            ttl_s=self.reliability.lease_ttl_s,
            renew_s=self.reliability.lease_renew_s,
            max_hold_s=self.reliability.task_time_limit_s,
        )
        self.leases.start()
        self.batcher: Batcher[ScoreItem, SetResult] = Batcher(
            self._score_batch, batch_max_size, batch_max_wait_s, name="cxr-batcher"
        )

    @property
    def model(self) -> ScoringModel:
        """The active model now (the registry may switch it between batches)."""
        return self.models.current().active.model

    @property
    def calibration(self) -> Calibration:
        """The active model's calibration now."""
        return self.models.current().active.calibration

    @timed_batch
    def _score_batch(self, items: Sequence[ScoreItem]) -> list[SetResult]:
        try:
            out = score_items(items, self.heatmaps)
            self.progress.advanced()
            return out
        finally:
            self.models.batch_done()  # the next job asks the registry for changes

    def close(self) -> None:
        self.leases.stop()
        self.batcher.close()
        self.engine.dispose()

    def process(self, job: ScoreJob) -> Outcome:
        """Score one instance; idempotent (a redelivered job of a final instance is a no-op)."""
        rel = self.reliability
        try:
            claim = repo.claim_instance(
                self.engine,
                job.instance_id,
                job.sop_instance_uid,
                owner=self.worker_id,
                lease_s=rel.lease_ttl_s,
                max_attempts=rel.max_attempts,
            )
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseUnavailableError("database unavailable") from exc
        if claim.state is repo.ClaimState.EXHAUSTED:
            log.warning(
                "failed after %d unfinished claims (a worker stopped each time)",
                claim.attempts,
                extra={"instance_id": job.instance_id, "sop_instance_uid": job.sop_instance_uid},
            )
            return Outcome(JobOutcome.FAILED, claim.reason)
        if claim.state is not repo.ClaimState.CLAIMED or claim.job is None:
            log.info(
                "instance %s, skipping",
                "held by another worker" if claim.state is repo.ClaimState.BUSY else "final",
                extra={"instance_id": job.instance_id, "sop_instance_uid": job.sop_instance_uid},
            )
            return Outcome(JobOutcome.SKIPPED)
        self.leases.hold(job.instance_id)
        self.progress.started()
        state = _JobState()
        try:
            # The database row, not the message, says where the instance is stored.
            job = job.model_copy(update={"storage_uri": claim.job.storage_uri})
            return self._score(job, state)
        except (OperationalError, DBAPIError) as exc:
            self._release(job, state)
            raise DatabaseUnavailableError("database unavailable") from exc
        except TransientError:
            self._release(job, state)
            raise
        finally:
            self.leases.drop(job.instance_id)
            self.progress.finished()

    def _release(self, job: ScoreJob, state: _JobState) -> None:
        """Give the claim back before a retry (best effort: with the database down the
        lease lapses instead, and the claim counts as an attempt)."""
        try:
            repo.release_claim(
                self.engine, job.instance_id, self.worker_id, counted=not state.decoded
            )
        except DBAPIError:
            log.warning("could not give back the claim on instance %d", job.instance_id)

    def _score(self, job: ScoreJob, state: _JobState) -> Outcome:
        t0 = time.perf_counter()
        try:
            data = read_instance(job.storage_uri)
        except InstanceMissingError as exc:
            # Retried: a worker without the shared volume mounted must not fail the queue
            # at once; after the last retry the reason is on the worklist.
            raise TransientError(
                "stored DICOM file not found: check that this worker mounts CXR_STORAGE_URI, "
                "or resend the study"
            ) from exc
        except StorageError as exc:
            raise TransientError(str(exc)) from exc
        limits = self.reliability.limits
        try:
            ds = read_checked_dataset(data, limits)  # sizes checked before any decode
        except InputRefusedError as exc:
            return self._fail(job, exc.reason)
        except NotAnImageError as exc:
            return self._fail(job, failure_reason(FailureCode.NO_IMAGE, exc))
        except ImagingError as exc:
            return self._fail(job, failure_reason(FailureCode.UNREADABLE_DICOM, exc))
        eligibility = check_eligibility(ds)
        if not eligibility.eligible:
            reason = eligibility.reason or "not a chest radiograph"
            repo.record_not_eligible(self.engine, job.instance_id, reason)
            log.info("not eligible: %s", reason, extra={"sop_instance_uid": job.sop_instance_uid})
            return Outcome(JobOutcome.NOT_ELIGIBLE, reason)
        try:
            models = self.models.current()
        except CxrTriageError as exc:
            raise TransientError(f"the active model could not be loaded: {exc}") from exc
        try:
            image = decode_dataset(ds)
            check_not_blank(image.pixels, limits)
            item = prepare(models, image.pixels)
        except InputRefusedError as exc:
            return self._fail(job, exc.reason)
        except NotAnImageError as exc:
            return self._fail(job, failure_reason(FailureCode.NO_IMAGE, exc))
        except ImagingError as exc:
            return self._fail(job, failure_reason(FailureCode.UNDECODABLE_PIXELS, exc))
        decode_ms = (time.perf_counter() - t0) * 1000
        # Decoded without killing the process: this claim no longer counts against the
        # file (a crash from here on is not this file's doing).
        repo.mark_decoded(self.engine, job.instance_id, self.worker_id)
        state.decoded = True
        future = self.batcher.submit(item)
        timeout = self.reliability.batch_timeout_s
        try:
            result, info = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return self._fail(
                job,
                f"scoring did not finish within {timeout:g} s (the worker is overloaded or "
                "stuck): read the image without a score; requeue with `cxr-triage requeue "
                f"--study {ds.get('StudyInstanceUID', 'UID')}` and contact support if it recurs",
            )
        return self._record(job, ds, image.pixels, result, info, decode_ms)

    def _record(
        self,
        job: ScoreJob,
        ds: pydicom.Dataset,
        pixels: np.ndarray,
        result: SetResult,
        info: BatchInfo,
        decode_ms: float,
    ) -> Outcome:
        from cxr_model import has_burned_in_annotation, render_overlay_png
        from cxr_model.population import assess_population

        def prediction(loaded: LoadedModel, png: bytes | None) -> repo.PredictionRecord:
            score = loaded.calibration.score(result.results[loaded.entry.version].logit)
            return repo.PredictionRecord(
                model_name=loaded.model.contract.name,
                model_version=loaded.entry.version,
                weights_sha256=loaded.entry.sha256,
                calibration_version=loaded.calibration.version,
                logit=score.logit,
                probability=score.probability,
                threshold=score.threshold,
                flagged=score.flagged,
                heatmap_png=png,
                device=str(loaded.model.device),
                batch_size=info.size,
                decode_ms=decode_ms,
                inference_ms=info.run_ms,
                worker_id=self.worker_id,
                score_lower=score.lower,
                score_upper=score.upper,
            )

        active = result.models.active
        cam = result.results[active.entry.version].cam
        png = None
        if cam is not None:
            score = active.calibration.score(result.results[active.entry.version].logit)
            png = render_overlay_png(
                pixels, cam, burned_in=has_burned_in_annotation(ds), score=score
            )
        for shadow in result.models.shadows:  # stored first: "done" means all are there
            repo.record_shadow_prediction(self.engine, job.instance_id, prediction(shadow, None))
        scored = result.results[active.entry.version]
        distance, image = scored.distance, scored.image
        assessed = assess_population(
            ds, active.population, self.population_policy, self.unknown_age, image=image
        )
        pred = prediction(active, png)
        repo.record_prediction(
            self.engine,
            job.instance_id,
            pred,
            triage=assessed.triage,
            population=repo.PopulationNote(
                assessed.population.value,
                assessed.reason,
                check=assessed.check.value,
                image_distance=distance,
            ),
        )
        log.info(
            "scored p=%.3f flagged=%s population=%s (%s) triage=%s batch=%d",
            pred.probability,
            pred.flagged and assessed.triage,
            assessed.population.value,
            assessed.check.value,
            assessed.triage,
            info.size,
            extra={"sop_instance_uid": job.sop_instance_uid},
        )
        return Outcome(JobOutcome.DONE, None, pred.probability)

    def _fail(self, job: ScoreJob, reason: str) -> Outcome:
        repo.record_failed(self.engine, job.instance_id, reason)
        log.warning("failed: %s", reason, extra={"sop_instance_uid": job.sop_instance_uid})
        return Outcome(JobOutcome.FAILED, reason)
