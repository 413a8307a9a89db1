"""Issue 12, worker side: kill -9, a file that kills its worker, poison files, Postgres
and Redis outages. Real ``cxr-triage work`` subprocesses, a real listener with its
reconciler, real Postgres and Redis (a throwaway one of each where the test stops it);
every assertion is a count from the database. CI-sized; the full-size runs are
``scripts/reliability_*.py`` (RELIABILITY.md)."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, text

from cxr_common.storage import instance_key, open_storage
from cxr_db import make_engine
from cxr_db.instances import writes as repo
from cxr_queue import ScoreJob, enqueue_score, make_celery
from cxr_triage.send import send_paths
from tests import poison
from tests.conftest import Services
from tests.dicom_factory import chest_like, make_dataset, write
from tests.faults import (
    OwnPostgres,
    OwnRedis,
    Workers,
    all_final,
    counts,
    held_by,
    listener_settings,
    peak_rss_bytes,
    running_listener,
    wait_for,
    worker_children,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GIB = 1 << 30


@pytest.fixture
def workers(services: Services, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(
        worker_env(
            services.database_url, services.broker_url, services.queue_name, services.data_dir
        ),
        tmp_path,
    )
    yield pool
    pool.stop()


def _datasets(tmp_path: Path, n: int, prefix: str) -> list[Path]:
    return [
        write(
            make_dataset(chest_like(96), accession=f"{prefix}{i:04d}"),
            tmp_path / f"{prefix}{i}.dcm",
        )
        for i in range(n)
    ]


def _row(engine: Engine, instance_id: int) -> tuple[str, int, str | None, str | None]:
    with engine.begin() as conn:
        r = conn.execute(
            text("SELECT status, attempts, lease_owner, reason FROM instances WHERE id = :i"),
            {"i": instance_id},
        ).one()
    return str(r.status), int(r.attempts), r.lease_owner, r.reason


def test_kill_9_mid_batch_puts_every_held_job_back_in_work_within_60_s(
    services: Services, engine: Engine, workers: Workers, tmp_path: Path
) -> None:
    settings = listener_settings(
        services.database_url, services.broker_url, services.queue_name, services.data_dir
    )
    with running_listener(settings, engine) as port:
        files = _datasets(tmp_path, 16, "KILL")
        assert send_paths(files, "127.0.0.1", port, progress=False).sent == 16
        sup = workers.start(
            CXR_BATCH_MAX_SIZE="4", CXR_CONCURRENCY="4", CXR_BATCH_MAX_WAIT_MS="1500"
        )
        holders: dict[int, list[int]] = {}

        def holds_jobs() -> bool:
            holders.update(held_by(engine))
            return bool(holders)

        wait_for("a worker holding jobs", holds_jobs, 180, workers.alive)
        (pid, held), *_ = holders.items()
        assert pid in worker_children(sup)
        os.kill(pid, signal.SIGKILL)  # mid-batch: its leases stay behind

        def back_in_work() -> bool:
            for instance_id in held:
                status, _, owner, _ = _row(engine, instance_id)
                if status == "processing" and owner is not None and owner.endswith(f":{pid}"):
                    return False
                if status in ("received", "queued"):
                    return False
            return True

        wait_for("every held job back in work", back_in_work, 60, workers.alive)
        wait_for("all final", lambda: all_final(engine, 16), 180, workers.alive)
    c = counts(engine)
    assert (c.get("done"), c["predictions"], c["predicted"]) == (16, 16, 16), c
    assert pid not in worker_children(sup)  # the supervisor started a new worker


def _mates_decoded(engine: Engine, instance_id: int, owner: str | None) -> bool:
    """Every other instance ``owner`` holds has been decoded (its attempt given back)."""
    with engine.begin() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM instances WHERE lease_owner = :o AND id != :i "
                "AND status = 'processing' AND attempts > 0"
            ),
            {"o": owner, "i": instance_id},
        ).scalar_one()
    return int(left) == 0


def _kill_while_decoding(
    engine: Engine, instance_id: int, killed: set[int], alive: Callable[[], bool]
) -> bool:
    """Act as the OOM killer for ``instance_id``: wait (polling every 5 ms) until a worker
    not killed yet has claimed it, give its small batch mates up to 0.3 s to decode (their
    attempts are given back then; polled, so the kill comes as soon as they are), and
    SIGKILL the worker while the big file is still being decoded (its claim's attempt not
    given back: 64 Mpx of RLE). False once the file is failed."""
    deadline = time.monotonic() + 180
    while True:
        status, attempts, owner, _ = _row(engine, instance_id)
        if status == "failed":
            return False
        pid = int(owner.rsplit(":", 1)[1]) if owner else None
        if status == "processing" and pid is not None and pid not in killed:
            mates_by = time.monotonic() + 0.3
            while not _mates_decoded(engine, instance_id, owner) and time.monotonic() < mates_by:
                time.sleep(0.005)
            now = _row(engine, instance_id)
            assert (now[0], now[1], now[2]) == (status, attempts, owner), (
                "the big file was decoded within 0.3 s of its claim: make it slower to decode"
            )
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            return True
        assert alive(), "a worker process died while waiting for the big file's claim"
        assert time.monotonic() < deadline, "the big file was not claimed within 180 s"
        time.sleep(0.005)


def test_a_file_that_kills_its_worker_fails_after_max_attempts_and_its_batch_mates_finish(
    services: Services, engine: Engine, workers: Workers, tmp_path: Path
) -> None:
    """The OOM-kill case: every time the big file is being decoded, its worker dies
    (here by SIGKILL, as the kernel's OOM killer would). After three deaths the next
    claim fails it with a reason that says what to do; the small images sent with it are
    scored, and none of them is charged an attempt."""
    settings = listener_settings(
        services.database_url, services.broker_url, services.queue_name, services.data_dir
    )
    with running_listener(settings, engine) as port:
        big = poison.rle_bomb(tmp_path / "big.dcm", rows=8000, columns=8000)  # 64 Mpx: allowed
        mates = _datasets(tmp_path, 6, "MATE")
        assert send_paths([big, *mates], "127.0.0.1", port, progress=False).sent == 7
        with engine.begin() as conn:
            big_id = conn.execute(
                text("SELECT id FROM instances ORDER BY size_bytes DESC LIMIT 1")
            ).scalar_one()
        sup = workers.start(
            CXR_BATCH_MAX_SIZE="4", CXR_BATCH_MAX_WAIT_MS="3000", CXR_MAX_ATTEMPTS="3"
        )
        kills = 0
        killed: set[int] = set()
        while _kill_while_decoding(engine, big_id, killed, workers.alive):
            kills += 1
            assert kills <= 3, "the big file was claimed again after 3 deaths"
        assert kills == 3
        wait_for("all final", lambda: all_final(engine, 7), 180, workers.alive)
        status, attempts, _, reason = _row(engine, big_id)
    assert (status, attempts) == ("failed", 3)
    assert reason is not None
    assert "stopped 3 times" in reason
    assert "cxr-triage requeue --study" in reason
    with engine.begin() as conn:
        mates_rows = conn.execute(
            text("SELECT status, attempts FROM instances WHERE id != :i"), {"i": big_id}
        ).all()
    assert [(r.status, r.attempts) for r in mates_rows] == [("done", 0)] * 6
    assert sup.poll() is None


def _record_stored(services: Services, engine: Engine, path: Path) -> int:
    """Store a file and record it as the listener would, bypassing the listener's own
    checks (the worker must hold even when a file got past them)."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import generate_uid

    meta = read_file_meta_info(path)  # not the data set: a deflate bomb stays unread here
    sop, study = str(meta.MediaStorageSOPInstanceUID), generate_uid()
    storage = open_storage((services.data_dir / "instances").as_uri())
    key = instance_key(study, sop)
    size = path.stat().st_size
    storage.put_file(key, path)  # moves it
    result = repo.record_instance(
        engine,
        repo.InstanceRecord(
            study_instance_uid=study,
            sop_instance_uid=sop,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            series_instance_uid=None,
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
            accession_number=None,
            modality="DX",
            body_part="CHEST",
            view_position="PA",
            calling_ae_title=None,
            storage_uri=storage.uri(key),
            size_bytes=size,
        ),
    )
    app = make_celery(services.broker_url, services.queue_name)
    enqueue_score(
        app,
        ScoreJob(
            instance_id=result.instance_id, sop_instance_uid=sop, storage_uri=storage.uri(key)
        ),
        services.queue_name,
    )
    repo.mark_enqueued(engine, result.instance_id)
    return result.instance_id


def test_poison_files_fail_with_a_true_reason_and_the_worker_stays_under_3_gib(
    services: Services, engine: Engine, workers: Workers, tmp_path: Path
) -> None:
    """Defect 6 at the worker: sizes are checked before any decode; a blank or constant
    frame is not scored; a good image sent among them is scored."""
    files = {
        "deflate bomb": (poison.deflate_bomb(tmp_path / "d1.dcm"), "Rows 32,768 exceeds"),
        "deflate bomb, lying size": (
            poison.deflate_bomb(tmp_path / "d2.dcm", rows=64, columns=64),
            "inflates to more than",
        ),
        "deflate bomb, private element": (
            poison.deflate_bomb(tmp_path / "d3.dcm", where="private"),
            "before Pixel Data",
        ),
        "RLE 20000 x 20000": (poison.rle_bomb(tmp_path / "r.dcm"), "Rows 20,000 exceeds"),
        "truncated": (poison.truncated_pixel_data(tmp_path / "t.dcm"), "truncated transfer"),
        "truncated file": (
            poison.truncated_pixel_data(tmp_path / "t2.dcm", cut_file=True),
            "resend",
        ),
        "0-length pixel data": (
            poison.zero_length_pixel_data(tmp_path / "z.dcm"),
            "empty (0 bytes)",
        ),
        "rows 0": (poison.absurd_dimensions(tmp_path / "a1.dcm", Rows=0), "Rows is 0"),
        "bits 64": (
            poison.absurd_dimensions(
                tmp_path / "a2.dcm", BitsAllocated=64, BitsStored=64, HighBit=63
            ),
            "BitsAllocated 64",
        ),
        "blank": (poison.blank_frame(tmp_path / "b.dcm"), "blank or constant image"),
        "constant": (poison.constant_frame(tmp_path / "c.dcm"), "blank or constant image"),
    }
    ids = {name: _record_stored(services, engine, path) for name, (path, _) in files.items()}
    good_path = write(poison.dx_dataset(chest_like(128)), tmp_path / "good.dcm")
    good = _record_stored(services, engine, good_path)
    sup = workers.start(CXR_BATCH_MAX_SIZE="4", CXR_BATCH_MAX_WAIT_MS="500")
    wait_for("all final", lambda: all_final(engine, len(files) + 1), 240, workers.alive)
    (child,) = worker_children(sup)
    peak = peak_rss_bytes(child)
    for name, (_, needle) in files.items():
        status, attempts, _, reason = _row(engine, ids[name])
        assert status == "failed", (name, status, reason)
        assert reason is not None
        assert needle in reason, (name, reason)
        assert attempts <= 1
    assert _row(engine, good)[0] == "done"
    assert peak < 3 * GIB, f"worker peak RSS {peak / GIB:.2f} GiB"


def test_postgres_down_while_workers_are_busy_leaves_no_row_stuck(
    services: Services, tmp_path: Path
) -> None:
    """Defect 1a: Postgres stops (fast shutdown: every client cut off) for 10 s while the
    worker scores; every instance ends final once it is back, none twice."""
    pg = OwnPostgres(tmp_path / "pg")
    try:
        pg.migrate()
        engine = make_engine(pg.url)
        queue = f"cxr-pgdown-{uuid.uuid4().hex[:8]}"
        settings = listener_settings(pg.url, services.broker_url, queue, tmp_path / "data")
        pool = Workers(worker_env(pg.url, services.broker_url, queue, tmp_path / "data"), tmp_path)
        try:
            with running_listener(settings, engine) as port:
                files = _datasets(tmp_path, 24, "PGDN")
                assert send_paths(files, "127.0.0.1", port, progress=False).sent == 24
                pool.start(CXR_BATCH_MAX_SIZE="4", CXR_BATCH_MAX_WAIT_MS="500")
                wait_for(
                    "scoring under way", lambda: counts(engine).get("done", 0) >= 2, 180, pool.alive
                )
                pg.stop()
                outage = wait_for("an outage of 10 s", _elapsed(10), 30)
                pg.start()
                wait_for(
                    "all final after the outage", lambda: all_final(engine, 24), 240, pool.alive
                )
            c = counts(engine)
            assert outage >= 10
            assert (c.get("done"), c["predictions"], c["predicted"]) == (24, 24, 24), c
        finally:
            pool.stop()
            engine.dispose()
    finally:
        pg.close()


def test_redis_down_and_back_empty_during_a_send_loses_nothing(
    services: Services, engine: Engine, tmp_path: Path
) -> None:
    """Defects 1b and 2: Redis dies (SIGKILL, no persistence) while the worker is busy
    and a sender keeps sending; the listener keeps storing and acknowledging; Redis comes
    back empty; the worker survives or is restarted by its supervisor; every instance is
    scored once."""
    redis_server = OwnRedis(tmp_path / "redis")
    redis_server.start()
    queue = f"cxr-redisdown-{uuid.uuid4().hex[:8]}"
    settings = listener_settings(services.database_url, redis_server.url, queue, services.data_dir)
    pool = Workers(
        worker_env(services.database_url, redis_server.url, queue, services.data_dir), tmp_path
    )
    try:
        with running_listener(settings, engine) as port:
            first = _datasets(tmp_path, 12, "RDA")
            assert send_paths(first, "127.0.0.1", port, progress=False).sent == 12
            sup = pool.start(CXR_BATCH_MAX_SIZE="4", CXR_BATCH_MAX_WAIT_MS="500")
            wait_for(
                "scoring under way", lambda: counts(engine).get("done", 0) >= 2, 180, pool.alive
            )
            before = set(worker_children(sup))
            redis_server.kill()
            second = _datasets(tmp_path, 12, "RDB")
            report = send_paths(second, "127.0.0.1", port, progress=False)
            assert (report.sent, report.failed) == (12, 0)  # stored and acknowledged
            wait_for("an outage of 10 s", _elapsed(10), 60)
            redis_server.start()  # back, empty
            wait_for(
                "all final after Redis came back", lambda: all_final(engine, 24), 240, pool.alive
            )
            after = set(worker_children(sup))
        c = counts(engine)
        assert (c.get("done"), c["predictions"], c["predicted"]) == (24, 24, 24), c
        assert sup.poll() is None  # the worker survived, or its supervisor restarted it
        assert after  # and one runs now (the same or a new one: `before` is only reported)
        print(f"worker pids before {sorted(before)}, after {sorted(after)}")
    finally:
        pool.stop()
        redis_server.kill()


def _elapsed(seconds: float) -> Callable[[], bool]:
    """True once ``seconds`` have passed: the length of an outage (a fault parameter,
    not a wait for something to happen)."""
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 >= seconds


def test_a_secondary_capture_with_text_in_its_pixels_gets_a_heatmap_on_grey(
    services: Services, engine: Engine, workers: Workers, tmp_path: Path
) -> None:
    """Defect 10: no BurnedInAnnotation YES in the header, but a Secondary Capture may
    carry burned-in text: the heatmap shows heat over neutral grey, never the pixels."""
    from cxr_model import CalibratedScore, render_overlay_png
    from cxr_model.heatmaps import NEUTRAL_GREY

    pixels = chest_like(256)
    pixels[8:24, 8:200] = 255  # a name burned into the pixels
    ds = make_dataset(
        pixels, sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT", accession="SCBURN01"
    )
    assert "BurnedInAnnotation" not in ds
    settings = listener_settings(
        services.database_url, services.broker_url, services.queue_name, services.data_dir
    )
    with running_listener(settings, engine) as port:
        assert (
            send_paths([write(ds, tmp_path / "sc.dcm")], "127.0.0.1", port, progress=False).sent
            == 1
        )
        workers.start(CXR_BATCH_MAX_SIZE="1", CXR_BATCH_MAX_WAIT_MS="0")
        wait_for("scored", lambda: counts(engine).get("done", 0) == 1, 180, workers.alive)
    with engine.begin() as conn:
        png = conn.execute(text("SELECT heatmap_png FROM predictions")).scalar_one()
    levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    # every colour heat over grey can take (the heat is quantised to 256 levels, whatever
    # the score's strength; a flagged score draws all of them)
    full = CalibratedScore(logit=5.0, probability=0.99, threshold=0.5, flagged=True)
    grey = render_overlay_png(
        np.full_like(levels, NEUTRAL_GREY), levels, burned_in=False, score=full
    )

    def colours(data: bytes) -> set[tuple[int, ...]]:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return {tuple(int(c) for c in px) for px in rgb.reshape(-1, 3)}

    assert colours(png) <= colours(grey)
