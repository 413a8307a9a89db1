"""One instance from storage to a database row: decode, eligibility, batched scoring,
Grad-CAM overlay, prediction upsert. The scoring rule and the heatmap (with its
burned-in annotation rule) are :mod:`cxr_model`'s, shared with ``predict``.

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

from cxr_common.errors import InstanceMissingError, StorageError, TransientError
from cxr_common.storage import read_instance
from cxr_db import repository as repo
from cxr_imaging import ImagingError, check_eligibility, decode_dataset
from cxr_queue import ScoreJob
from worker.batching import Batcher, BatchInfo
from worker.outcomes import JobOutcome, Outcome

if TYPE_CHECKING:
    import torch

    from cxr_model import Calibration, ScoreResult, ScoringModel

log = logging.getLogger(__name__)


class ScoringRuntime:
    """Everything a worker process loads once: engine, model, calibration, batcher."""

    def __init__(
        self,
        engine: Engine,
        model: ScoringModel,
        calibration: Calibration,
        *,
        concurrency: int,
        batch_max_size: int,
        batch_max_wait_s: float,
        heatmaps: bool = True,
    ) -> None:
        self.engine = engine
        self.model = model
        self.calibration = calibration
        self.heatmaps = heatmaps
        self.concurrency = concurrency
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.batcher: Batcher[torch.Tensor, ScoreResult] = Batcher(
            self._score_batch, batch_max_size, batch_max_wait_s, name="cxr-batcher"
        )

    def _score_batch(self, tensors: Sequence[torch.Tensor]) -> list[ScoreResult]:
        import torch

        return list(self.model.score_batch(torch.stack(list(tensors)), with_heatmaps=self.heatmaps))

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
            image = decode_dataset(ds)
            tensor = self.model.preprocess(image.pixels)
        except ImagingError as exc:
            return self._fail(job, f"pixel data could not be decoded: {exc}")
        decode_ms = (time.perf_counter() - t0) * 1000
        result, info = self.batcher.submit(tensor).result()
        return self._record(job, ds, image.pixels, result, info, decode_ms)

    def _record(
        self,
        job: ScoreJob,
        ds: pydicom.Dataset,
        pixels: np.ndarray,
        result: ScoreResult,
        info: BatchInfo,
        decode_ms: float,
    ) -> Outcome:
        from cxr_model import has_burned_in_annotation, render_overlay_png

        score = self.calibration.score(result.logit)
        png = None
        if result.cam is not None:
            burned_in = has_burned_in_annotation(ds)
            png = render_overlay_png(pixels, result.cam, burned_in=burned_in, score=score)
        contract = self.model.contract
        repo.record_prediction(
            self.engine,
            job.instance_id,
            repo.PredictionRecord(
                model_name=contract.name,
                model_version=contract.version,
                weights_sha256=contract.sha256,
                calibration_version=self.calibration.version,
                logit=score.logit,
                probability=score.probability,
                threshold=score.threshold,
                flagged=score.flagged,
                heatmap_png=png,
                device=str(self.model.device),
                batch_size=info.size,
                decode_ms=decode_ms,
                inference_ms=info.run_ms,
                worker_id=self.worker_id,
            ),
        )
        log.info(
            "scored p=%.3f flagged=%s batch=%d",
            score.probability,
            score.flagged,
            info.size,
            extra={"sop_instance_uid": job.sop_instance_uid},
        )
        return Outcome(JobOutcome.DONE, None, score.probability)

    def _fail(self, job: ScoreJob, reason: str) -> Outcome:
        repo.record_failed(self.engine, job.instance_id, reason)
        log.warning("failed: %s", reason, extra={"sop_instance_uid": job.sop_instance_uid})
        return Outcome(JobOutcome.FAILED, reason)
