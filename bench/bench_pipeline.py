"""End-to-end throughput: DICOM association → Postgres → Redis → worker → predictions.

    .venv/bin/python bench/bench_pipeline.py [--images 64] [--batch-sizes 1,8] [--workers 1]

For each batch size: a fresh database, a listener in this process, worker subprocess(es),
N chest radiographs (copies of the bundled Kermany-derived samples with new UIDs) sent
over one association; the clock runs from the first C-STORE to the last final row.
Uses CXR_DATABASE_URL/CXR_BROKER_URL when set, else the embedded default.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import text

from cxr_common.settings import ListenerSettings
from cxr_db import make_engine, reads
from cxr_db.statuses import FINAL_STATUSES
from cxr_queue import make_celery
from cxr_triage.demo import SAMPLES_DIR
from cxr_triage.send import send_paths
from cxr_triage.services import resolve_services
from dicom_listener.server import start_listener
from migrations import upgrade_to_head

FINAL = {s.value for s in FINAL_STATUSES}


def make_copies(n: int, out: Path) -> list[Path]:
    sources = sorted((SAMPLES_DIR / "derived").glob("*.dcm"))
    files = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"bench-{i:04d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def run_once(args: argparse.Namespace, batch: int, files: list[Path], tmp: Path) -> float:
    services = resolve_services(ListenerSettings(), tmp / "svc")
    engine = make_engine(services.database_url)
    upgrade_to_head(services.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE predictions, instances, studies RESTART IDENTITY CASCADE"))
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    settings = ListenerSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        queue_name=queue,
        storage_uri=(tmp / f"instances-{batch}").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
    )
    handle = start_listener(settings, engine, make_celery(services.broker_url, queue))
    env = services.child_env(dict(os.environ))
    env.update(CXR_QUEUE_NAME=queue, CXR_BATCH_MAX_SIZE=str(batch), CXR_BATCH_MAX_WAIT_MS="100")
    if args.no_heatmaps:
        env["CXR_HEATMAPS"] = "false"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "work"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(args.workers)
    ]
    try:
        # warm-up: one image so model loading is not timed
        send_paths(files[:1], "127.0.0.1", handle.port, progress=False)
        while not all(s in FINAL for s in reads.instance_statuses(engine).values()):
            time.sleep(0.05)
        t0 = time.perf_counter()
        send_paths(files[1:], "127.0.0.1", handle.port, progress=False)
        while True:
            st = reads.instance_statuses(engine)
            if len(st) >= len(files) and all(s in FINAL for s in st.values()):
                break
            time.sleep(0.05)
        return (len(files) - 1) / (time.perf_counter() - t0)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
        handle.shutdown()
        engine.dispose()
        services.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-heatmaps", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = make_copies(args.images + 1, tmp)
        base = None
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            rate = run_once(args, batch, files, tmp)
            base = base or rate
            print(
                f"workers={args.workers} batch={batch:3d} heatmaps={not args.no_heatmaps} "
                f"{rate:6.1f} img/s end to end (x{rate / base:.2f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
