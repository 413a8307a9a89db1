"""Rows written through the real repository functions, for tests that need a worklist."""

from __future__ import annotations

from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from sqlalchemy import Engine

from cxr_db.instances import writes as repo


def record(engine: Engine, study: str, sop: str, accession: str | None = None) -> int:
    """Record one CR chest instance as the listener would; returns its id."""
    rec = repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=sop,
        sop_class_uid=ComputedRadiographyImageStorage,
        series_instance_uid=None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        accession_number=accession,
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        calling_ae_title="TEST",
        storage_uri=f"file:///nowhere/{sop}.dcm",
        size_bytes=1,
    )
    return repo.record_instance(engine, rec).instance_id


def prediction(
    p: float,
    threshold: float = 0.5,
    png: bytes | None = b"\x89PNG",
    version: str = "v1",
) -> repo.PredictionRecord:
    """A prediction as the worker would write it."""
    return repo.PredictionRecord(
        model_name="cxr-pneumonia",
        model_version=version,
        weights_sha256="0" * 64,
        calibration_version="c1",
        logit=0.0,
        probability=p,
        threshold=threshold,
        flagged=p >= threshold,
        heatmap_png=png,
        device="cpu",
        batch_size=1,
        decode_ms=1.0,
        inference_ms=1.0,
        worker_id="test",
    )
