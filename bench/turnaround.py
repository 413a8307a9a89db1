"""Turnaround: C-STORE response -> prediction row, idle and under a backlog.

    python -m bench.turnaround [--idle 10] [--backlog 200 | --full] [--associations 4]
                               [--batch 4] [--input uncompressed] [--size 0] [--out t.json]

``cxr-triage listen`` and one ``cxr-triage work`` run as their own processes. Idle: one
instance at a time, each sent when the previous one is scored. Backlog: ``--backlog``
instances (``--full``: 1,000) sent at once over ``--associations`` parallel clients.
Turnaround per instance is, by the database clock, the prediction's write time minus the
instance's enqueue time (set just before the listener answers the C-STORE). Goal 4 of
issue 10: p95 <= 2 s idle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import text

from bench.common import (
    INPUT_KINDS,
    Bench,
    add_common_arguments,
    apply_threads,
    bench_services,
    clear_folder,
    make_copies,
    percentile,
    report,
    timings,
)
from bench.ingest import send_parallel
from bench.workers import wait_ready
from cxr_common.settings import WorkerSettings, resolve_batching
from cxr_triage.send import send_paths


def _scored(engine: Any, sop_instance_uid: str) -> bool:
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM instances WHERE sop_instance_uid = :u"),
            {"u": sop_instance_uid},
        ).scalar_one_or_none()
    if status in ("failed", "not_eligible"):
        raise RuntimeError(f"instance {status}")
    return bool(status == "done")


def _wait_count(engine: Any, n: int, timeout_s: float = 7200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.execute(
                text("SELECT count(*) FROM instances WHERE status IN ('done','failed')")
            ).scalar_one()
        if done >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{n} instances not scored in time")


def _row(phase: str, seconds: list[float]) -> dict[str, Any]:
    return {
        "phase": phase,
        "n": len(seconds),
        "p50_s": percentile(seconds, 50),
        "p95_s": percentile(seconds, 95),
        "max_s": max(seconds),
    }


def measure(
    bench: Bench, idle: list[Path], backlog: list[Path], args: argparse.Namespace
) -> list[dict[str, Any]]:
    storage = bench.folder / "turnaround-instances"
    clear_folder(storage)
    listener, port = bench.listener(storage)
    worker = bench.worker(args.batch, storage)
    engine = bench.engine()
    rows = []
    try:
        wait_ready(bench, [worker])
        for path in idle:
            if not send_paths([path], "127.0.0.1", port, progress=False).ok:
                raise RuntimeError("C-STORE failed")
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            while not _scored(engine, uid):
                time.sleep(0.02)
        t = timings(engine)
        first_id = min(t, default=None)  # the first one warms the model up; not counted
        idle_t = [v.scored - v.enqueued for k, v in t.items() if k != first_id]
        if idle_t:
            rows.append(_row("idle", idle_t))
        seen = set(t)
        if backlog:
            send_parallel(backlog, port, args.associations, args.input)
            _wait_count(engine, len(idle) + len(backlog))
            t = timings(engine)
            back = [v for k, v in t.items() if k not in seen]
            rows.append(_row(f"backlog of {len(backlog)}", [v.scored - v.enqueued for v in back]))
            span = max(v.scored for v in back) - min(v.enqueued for v in back)
            rows[-1]["img_s"] = len(back) / span
    finally:
        bench.stop(worker)
        bench.stop(listener)
        engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, default=10, help="instances sent one at a time")
    parser.add_argument("--backlog", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="a backlog of 1,000")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=resolve_batching(WorkerSettings(), "cpu")[0])
    parser.add_argument("--input", choices=INPUT_KINDS, default="uncompressed")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    if args.full:
        args.backlog = 1000
    with (
        tempfile.TemporaryDirectory(prefix="cxr-bench-turn-") as d,
        bench_services(Path(d)) as bench,
    ):
        folder = Path(d) / "inputs"
        idle = make_copies(args.input, args.idle + 1, folder, args.size, "idle-")
        backlog = make_copies(args.input, args.backlog, folder, args.size, "backlog-")
        rows = measure(bench, idle, backlog, args)
    summary = {f"{r['phase']} p95_s": r["p95_s"] for r in rows}
    summary["goal_4_idle_p95_s"] = rows[0]["p95_s"] if rows and rows[0]["phase"] == "idle" else None
    return report(
        "turnaround", args, rows, ["phase", "n", "p50_s", "p95_s", "max_s", "img_s"], summary
    )


if __name__ == "__main__":
    main()
