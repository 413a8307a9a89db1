"""The worker measurements shared by ``worker_efficiency``, ``worker_scaling`` and
``batch_sweep``: instances stored and recorded as the listener does, then scored by real
``cxr-triage work`` processes (end to end) or stage by stage in this process.

End to end: the workers start and load the model, score a warm-up batch, then N jobs are
enqueued back to back (a backlog); the rate is N over the database clock from the first
job enqueued to the last prediction written. Stages: the same work on another N copies
of the same files, one stage after another in this process, each timed: database claim
and prediction write, read + parse, eligibility + decode, preprocess, forward + heatmap
(batched as the worker batches), PNG overlay.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom

from bench.common import Bench, clear_folder, timings
from cxr_common.storage import instance_key, open_storage, read_instance
from cxr_db.instances import writes as repo
from cxr_queue import ScoreJob, make_celery


def record_instances(bench: Bench, engine: Any, storage: Path, files: list[Path]) -> list[ScoreJob]:
    """Store each file (fsync + rename) and record its row, as the listener does."""
    store = open_storage(storage.as_uri())
    jobs = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = instance_key(ds.StudyInstanceUID, ds.SOPInstanceUID)
        staged = store.staging_dir() / f"{ds.SOPInstanceUID}.part"
        shutil.copyfile(path, staged)
        store.put_file(key, staged)
        result = repo.record_instance(
            engine,
            repo.InstanceRecord(
                study_instance_uid=ds.StudyInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                series_instance_uid=ds.SeriesInstanceUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                accession_number=ds.get("AccessionNumber"),
                modality=ds.Modality,
                body_part=ds.get("BodyPartExamined"),
                view_position=ds.get("ViewPosition"),
                calling_ae_title="BENCH",
                storage_uri=store.uri(key),
                size_bytes=path.stat().st_size,
            ),
        )
        jobs.append(
            ScoreJob(
                instance_id=result.instance_id,
                sop_instance_uid=ds.SOPInstanceUID,
                storage_uri=store.uri(key),
            )
        )
    return jobs


def wait_ready(bench: Bench, procs: list[Any], timeout_s: float = 300) -> None:
    """Until every worker answers a ping (its model is loaded and it consumes)."""
    import socket

    app = make_celery(bench.broker_url, bench.queue)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited with code {p.returncode}")
            # `cxr-triage work` runs the Celery worker in a child it restarts if it dies:
            # the worker's name carries the child's pid.
            names = [
                f"cxr-worker-{pid}@{socket.gethostname()}"
                for p in procs
                for pid in (p.pid, *_children(p.pid))
            ]
            replies = app.control.ping(destination=names, timeout=1.0) or []
            if len(replies) >= len(procs):
                return
        raise TimeoutError("workers not ready")
    finally:
        app.close()


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc; none elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _wait_done(engine: Any, ids: set[int], timeout_s: float = 3600) -> None:
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, status FROM instances WHERE id = ANY(:ids)"), {"ids": list(ids)}
            ).all()
        if all(r.status in ("done", "failed", "not_eligible") for r in rows):
            bad = [r.status for r in rows if r.status != "done"]
            if bad:
                raise RuntimeError(f"{len(bad)} instances not scored: {sorted(set(bad))}")
            return
        time.sleep(0.05)
    raise TimeoutError("instances not scored in time")


def end_to_end(
    bench: Bench, files: list[Path], warmup: list[Path], *, batch: int, workers: int
) -> dict[str, float]:
    """img/s of ``workers`` real worker processes on a backlog of ``files``."""
    from cxr_db import make_engine
    from dicom_listener.enqueue import enqueue_instance

    bench.reset()
    storage = bench.folder / "worker-instances"
    clear_folder(storage)
    engine = make_engine(bench.database_url)
    app = make_celery(bench.broker_url, bench.queue)
    procs = [bench.worker(batch, storage) for _ in range(workers)]
    try:
        wait_ready(bench, procs)
        warm = record_instances(bench, engine, storage, warmup)
        for job in warm:
            enqueue_instance(engine, app, bench.queue, job)
        _wait_done(engine, {j.instance_id for j in warm})
        jobs = record_instances(bench, engine, storage, files)
        for job in jobs:
            enqueue_instance(engine, app, bench.queue, job)
        ids = {j.instance_id for j in jobs}
        _wait_done(engine, ids)
        t = [v for k, v in timings(engine).items() if k in ids]
    finally:
        for p in procs:
            bench.stop(p)
        app.close()
        engine.dispose()
        shutil.rmtree(storage, ignore_errors=True)
    span = max(x.scored for x in t) - min(x.enqueued for x in t)
    return {"img_s": len(t) / span, "seconds": span}


def stages(bench: Bench, files: list[Path], *, batch: int) -> dict[str, float]:
    """Seconds per image of each of the worker's stages, run back to back here."""
    import torch

    from cxr_db import make_engine
    from cxr_imaging import check_eligibility, decode_dataset
    from cxr_model import has_burned_in_annotation, load_calibration, load_model

    bench.reset()
    storage = bench.folder / "stage-instances"
    clear_folder(storage)
    engine = make_engine(bench.database_url)
    model = load_model(device="cpu")
    calibration = load_calibration(model_sha256=model.contract.sha256)
    from cxr_model import render_overlay_png

    jobs = record_instances(bench, engine, storage, files)
    size = model.contract.input_size
    for n in sorted({batch, len(jobs) % batch or batch}):  # warm-up at the batch shapes used
        model.score_batch(torch.rand(n, 3, size, size))
    spent = dict.fromkeys(
        (
            "db_claim_write",
            "read_parse",
            "eligibility_decode",
            "preprocess",
            "forward_heatmap",
            "png",
        ),
        0.0,
    )

    def timed(stage: str, fn: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        spent[stage] += time.perf_counter() - t0
        return out

    try:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            items = []
            for job in chunk:
                claimed = timed(
                    "db_claim_write",
                    repo.start_processing,
                    engine,
                    job.instance_id,
                    job.sop_instance_uid,
                )
                assert claimed is not None
                data = timed("read_parse", read_instance, claimed.storage_uri)
                ds = timed("read_parse", pydicom.dcmread, io.BytesIO(data))
                t0 = time.perf_counter()
                assert check_eligibility(ds).eligible
                image = decode_dataset(ds)
                spent["eligibility_decode"] += time.perf_counter() - t0
                tensor = timed("preprocess", model.preprocess, image.pixels)
                items.append((job, ds, image.pixels, tensor))
            results = timed(
                "forward_heatmap", model.score_batch, torch.stack([i[3] for i in items])
            )
            for (job, ds, pixels, _), result in zip(items, results, strict=True):
                assert result.cam is not None
                score = calibration.score(result.logit)
                png = timed(
                    "png",
                    render_overlay_png,
                    pixels,
                    result.cam,
                    burned_in=has_burned_in_annotation(ds),
                    score=score,
                )
                record = repo.PredictionRecord(
                    model_name=model.contract.name,
                    model_version=model.contract.version,
                    weights_sha256=model.contract.sha256,
                    calibration_version=calibration.version,
                    logit=score.logit,
                    probability=score.probability,
                    threshold=score.threshold,
                    flagged=score.flagged,
                    heatmap_png=png,
                    device=str(model.device),
                    batch_size=len(items),
                    decode_ms=0.0,
                    inference_ms=0.0,
                    worker_id="bench",
                )
                timed("db_claim_write", repo.record_prediction, engine, job.instance_id, record)
    finally:
        engine.dispose()
        shutil.rmtree(storage, ignore_errors=True)
    return {k: v / len(jobs) for k, v in spent.items()}
