"""One instance from storage to a database row: decode, eligibility, batched scoring,
Grad-CAM overlay, prediction upsert. The scoring rule and the heatmap (with its
burned-in annotation rule) are :mod:`cxr_model`'s, shared with ``predict``.

The models come from the registry (``worker.registry``): the active model's score triages
unless the instance is outside its validated population (``CXR_POPULATION_POLICY``), and
shadow models score the same batch, stored under their version, never used for priority.

Errors are sorted at this boundary: ``TransientError`` (database or storage briefly
unavailable) is retried by the task; anything about the file itself is permanent and
ends as a ``failed`` or ``not_eligible`` row with a reason a person can act on.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from cxr_common.errors import CxrTriageError, InstanceMissingError, StorageError, TransientError
from cxr_common.population import PopulationPolicy, UnknownAge
from cxr_common.storage import read_instance
from cxr_db import repository as repo
from cxr_imaging import ImagingError, check_eligibility, decode_dataset
from cxr_queue import ScoreJob
from worker.batching import Batcher, BatchInfo
from worker.metrics import timed_batch
from worker.outcomes import JobOutcome, Outcome
from worker.registry import ScoreItem, ServedModels, SetResult, prepare, score_items

if TYPE_CHECKING:
    from cxr_model import Calibration, ScoringModel
    from worker.registry import LoadedModel

log = logging.getLogger(__name__)


class ScoringRuntime:
    """Everything a worker process loads once: engine, served models, batcher."""

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
    ) -> None:
        self.engine = engine
        self.models = models
        self.heatmaps = heatmaps
        self.population_policy = population_policy
        self.unknown_age = unknown_age
        self.concurrency = concurrency
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
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
            return score_items(items, self.heatmaps)
        finally:
            self.models.batch_done()  # the next job asks the registry for changes

    def close(self) -> None:
        self.batcher.close()
        self.engine.dispose()

    def process(self, job: ScoreJob) -> Outcome:
        """Score one instance; idempotent (a redelivered job of a final instance is a no-op)."""
        try:
            claimed = repo.start_processing(self.engine, job.instance_id, job.sop_instance_uid)
        except (OperationalError, DBAPIError) as exc:
            raise TransientError("database unavailable") from exc
        if claimed is None:
            log.info(
                "instance already final or unknown, skipping",
                extra={"instance_id": job.instance_id, "sop_instance_uid": job.sop_instance_uid},
            )
            return Outcome(JobOutcome.SKIPPED)
        try:
            # The database row, not the message, says where the instance is stored.
            return self._score(job.model_copy(update={"storage_uri": claimed.storage_uri}))
        except (OperationalError, DBAPIError) as exc:
            raise TransientError("database unavailable") from exc

    def _score(self, job: ScoreJob) -> Outcome:
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
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
            return self._fail(job, f"unreadable DICOM ({type(exc).__name__}); resend the study")
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
            item = prepare(models, image.pixels)
        except ImagingError as exc:
            return self._fail(job, f"pixel data could not be decoded: {exc}")
        decode_ms = (time.perf_counter() - t0) * 1000
        result, info = self.batcher.submit(item).result()
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
        assessed = assess_population(
            ds, active.population, self.population_policy, self.unknown_age
        )
        pred = prediction(active, png)
        repo.record_prediction(
            self.engine,
            job.instance_id,
            pred,
            triage=assessed.triage,
            population=repo.PopulationNote(assessed.population.value, assessed.reason),
        )
        log.info(
            "scored p=%.3f flagged=%s population=%s triage=%s batch=%d",
            pred.probability,
            pred.flagged and assessed.triage,
            assessed.population.value,
            assessed.triage,
            info.size,
            extra={"sop_instance_uid": job.sop_instance_uid},
        )
        return Outcome(JobOutcome.DONE, None, pred.probability)

    def _fail(self, job: ScoreJob, reason: str) -> Outcome:
        repo.record_failed(self.engine, job.instance_id, reason)
        log.warning("failed: %s", reason, extra={"sop_instance_uid": job.sop_instance_uid})
        return Outcome(JobOutcome.FAILED, reason)
