"""The spine end to end with real parts: DICOM association → Postgres → Redis → Celery
worker (batched scoring, Grad-CAM) → predictions and heatmaps in Postgres → worklist."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, text

from cxr_db.instances.statuses import InstanceStatus
from cxr_db.worklist import reads
from cxr_queue import ScoreJob, enqueue_score, make_celery
from cxr_triage.send import send_paths
from tests.conftest import REPO, SAMPLES, Services
from tests.dicom_factory import corrupt_j2k, make_dataset, write
from tests.integration.conftest import wait_until_final, wait_until_queue_drained

pytestmark = pytest.mark.integration

NOT_ELIGIBLE = {
    "ct-small.dcm": "CT",
    "ot-abdomen.dcm": "",
    "nm-jpeg-extended.dcm": "NM",
    "rg3-j2k-extremity.dcm": "EXTREMITY",
}


PNEUMONIA_JPEG = REPO / "tests/fixtures/kermany/train/PNEUMONIA/person1002_bacteria_2933.jpeg"


def _sample_files() -> list[Path]:
    return sorted(SAMPLES.rglob("*.dcm"))


def test_samples_are_scored_in_batches_with_heatmaps_and_ineligible_ones_are_listed(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    files = _sample_files()
    assert len(files) >= 10
    report = send_paths(files, "127.0.0.1", listener, progress=False)
    assert report.sent == len(files)
    assert report.failed == 0
    # The worker starts after every job is queued, so its first pull fills a batch.
    start_worker(batch_size=4, wait_ms=1000, log=tmp_path / "worker.log")
    statuses = wait_until_final(engine, len(files))

    by_name = {}
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT sop_instance_uid, status, reason FROM instances")).all()
    sop_to_row = {r.sop_instance_uid: r for r in rows}
    import pydicom

    for f in files:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        by_name[f.name] = sop_to_row[sop]
    for name, needle in NOT_ELIGIBLE.items():
        row = by_name[name]
        assert row.status == "not_eligible", (name, row.status, row.reason)
        assert row.reason
        assert needle in row.reason
    scored = [n for n in by_name if n not in NOT_ELIGIBLE]
    for name in scored:
        assert by_name[name].status == "done", (name, by_name[name].reason)
    assert sum(1 for s in statuses.values() if s == "done") == len(scored)

    with engine.begin() as conn:
        preds = conn.execute(
            text(
                "SELECT probability, threshold, flagged, triage, batch_size, heatmap_png, "
                "model_version, weights_sha256, score_lower, score_upper FROM predictions"
            )
        ).all()
    assert len(preds) == len(scored)
    assert max(p.batch_size for p in preds) > 1  # scored together, not one by one
    for p in preds:
        assert 0.0 <= p.probability <= 1.0
        # every score carries its interval from the shipped calibration (issue 21)
        assert 0.0 <= p.score_lower <= p.probability <= p.score_upper <= 1.0
        # a score outside the validated population (the adult films) never flags
        assert p.flagged == (p.triage and p.probability >= p.threshold)
        assert len(p.weights_sha256) == 64
        assert p.model_version
        img = Image.open(io.BytesIO(p.heatmap_png))
        img.load()
        assert img.format == "PNG"
        assert min(img.size) >= 64
        assert not img.text  # no text chunks: nothing that could carry patient data
    # The worklist: flagged first, every study present, ineligible ones with reasons.
    wl = reads.worklist(engine)
    flags = [e.flagged for e in wl]
    assert flags == sorted(flags, reverse=True)
    assert sum(e.instances for e in wl) == len(files)
    assert any(
        e.status is InstanceStatus.NOT_ELIGIBLE and e.reasons and e.reasons[0].reason for e in wl
    )
    shown = [e for e in wl if e.score is not None or e.shadow_score is not None]
    assert shown
    for e in shown:
        score = e.score if e.score is not None else e.shadow_score
        assert score is not None
        assert e.score_lower is not None
        assert e.score_upper is not None
        assert e.score_lower <= score <= e.score_upper


def test_undecodable_pixels_end_as_a_visible_failed_study(
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    bad = corrupt_j2k(tmp_path / "bad.dcm", accession="BROKEN01")
    good = write(make_dataset(accession="GOOD0001"), tmp_path / "good.dcm")
    report = send_paths([bad, good], "127.0.0.1", listener, progress=False)
    assert report.sent == 2
    start_worker(batch_size=2, wait_ms=200)
    wait_until_final(engine, 2)
    wl = {e.accession_number: e for e in reads.worklist(engine)}
    assert wl["BROKEN01"].status is InstanceStatus.FAILED
    ((status, reason),) = [(r.status, r.reason) for r in wl["BROKEN01"].reasons]
    assert status is InstanceStatus.FAILED
    assert reason is not None
    assert "decode" in reason
    # coded: fixed text and the error's class, never the decoder's own message (issue 20)
    assert reason == (
        "pixel data could not be decoded: ask the modality to resend the study, and read "
        "the image without a score (UndecodableError)"
    )
    assert wl["GOOD0001"].status is InstanceStatus.DONE


def test_redelivered_job_creates_no_second_prediction(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    path = write(make_dataset(accession="REDELIV1"), tmp_path / "one.dcm")
    assert send_paths([path], "127.0.0.1", listener, progress=False).sent == 1
    with engine.begin() as conn:
        inst = conn.execute(text("SELECT id, sop_instance_uid, storage_uri FROM instances")).one()
    app = make_celery(services.broker_url, services.queue_name)
    job = ScoreJob(
        instance_id=inst.id, sop_instance_uid=inst.sop_instance_uid, storage_uri=inst.storage_uri
    )
    enqueue_score(app, job, services.queue_name)  # a duplicate, as after a redelivery
    enqueue_score(app, job, services.queue_name)
    start_worker(batch_size=2, wait_ms=100)
    wait_until_final(engine, 1)
    wait_until_queue_drained(services)
    with engine.begin() as conn:
        n = conn.execute(text("SELECT count(*) FROM predictions")).scalar_one()
        attempts = conn.execute(text("SELECT attempts FROM instances")).scalar_one()
    assert n == 1
    # one claim held the lease (a duplicate finds it busy or final); decoding took it off
    # ``attempts``, which only keeps the claims a worker died in
    assert attempts == 0


def test_two_workers_share_one_queue_without_duplicate_predictions(
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    files = [
        write(make_dataset(accession=f"MULTI{i:03d}"), tmp_path / f"m{i}.dcm") for i in range(24)
    ]
    assert send_paths(files, "127.0.0.1", listener, progress=False).sent == 24
    start_worker(batch_size=4, wait_ms=200)
    start_worker(batch_size=4, wait_ms=200)
    wait_until_final(engine, 24)
    with engine.begin() as conn:
        total = conn.execute(text("SELECT count(*) FROM predictions")).scalar_one()
        distinct = conn.execute(
            text("SELECT count(DISTINCT instance_id) FROM predictions")
        ).scalar_one()
        done = conn.execute(
            text("SELECT count(*) FROM instances WHERE status = 'done'")
        ).scalar_one()
    assert (total, distinct, done) == (24, 24, 24)


def test_a_missing_stored_file_is_retried_then_shown_as_failed_with_what_to_check(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    path = write(make_dataset(accession="MISSING1"), tmp_path / "gone.dcm")
    assert send_paths([path], "127.0.0.1", listener, progress=False).sent == 1
    for stored in (services.data_dir / "instances").rglob("*.dcm"):
        stored.unlink()  # as if this worker did not mount the shared volume
    start_worker(batch_size=1, wait_ms=0, extra_env={"CXR_MAX_RETRIES": "1"})
    wait_until_final(engine, 1)
    (entry,) = reads.worklist(engine)
    assert entry.status is InstanceStatus.FAILED
    (why,) = entry.reasons
    assert why.reason is not None
    assert "CXR_STORAGE_URI" in why.reason
    assert "requeue" in why.reason  # and what to do once it is fixed
    with engine.begin() as conn:
        # ``attempts`` counts claims that ended without a result (a worker that died):
        # both transient tries gave their claim back, so none counts against the file.
        assert conn.execute(text("SELECT attempts FROM instances")).scalar_one() == 0


def _palette_of_neutral_field() -> set[tuple[int, ...]]:
    """Every colour a heatmap drawn on the neutral grey field can have (one per heat level)."""
    from cxr_model import CalibratedScore, render_overlay_png
    from cxr_model.heatmaps import NEUTRAL_GREY

    levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    flagged = CalibratedScore(logit=5.0, probability=0.99, threshold=0.5, flagged=True)
    png = render_overlay_png(
        np.full_like(levels, NEUTRAL_GREY), levels, burned_in=False, score=flagged
    )
    return {tuple(int(c) for c in px) for px in _rgb(png).reshape(-1, 3)}


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_predict_and_the_worker_give_the_same_flag_and_a_neutral_heatmap_for_burned_in_text(
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
) -> None:
    from training.predict import predict_paths

    pixels = np.asarray(Image.open(PNEUMONIA_JPEG).convert("L"), dtype=np.uint8).copy()
    pixels[8:24, 8:120] = 255  # text burned into the pixels, e.g. a name
    ds = make_dataset(pixels, accession="BURNED01")
    ds.BurnedInAnnotation = "YES"
    path = write(ds, tmp_path / "burned.dcm")

    (offline,) = predict_paths([path], heatmap_dir=tmp_path / "heatmaps", device="cpu")
    assert send_paths([path], "127.0.0.1", listener, progress=False).sent == 1
    start_worker(batch_size=1, wait_ms=0)
    assert wait_until_final(engine, 1) == {ds.SOPInstanceUID: "done"}
    with engine.begin() as conn:
        worker = conn.execute(
            text("SELECT probability, threshold, flagged, heatmap_png FROM predictions")
        ).one()

    assert offline["eligible"]
    assert offline["flagged"] == worker.flagged
    assert offline["threshold"] == pytest.approx(worker.threshold)
    assert offline["probability"] == pytest.approx(worker.probability, abs=1e-4)
    offline_png = Path(offline["heatmap"]).read_bytes()
    assert float(np.abs(_rgb(offline_png) - _rgb(worker.heatmap_png)).mean()) < 1.0
    palette = _palette_of_neutral_field()
    for png in (offline_png, worker.heatmap_png):
        colours = {tuple(int(c) for c in px) for px in _rgb(png).reshape(-1, 3)}
        assert colours <= palette  # heat over grey only: no trace of the pixels or the text
