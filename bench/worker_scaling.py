"""Scaling with worker processes: end-to-end img/s of 1, 2, ... ``cxr-triage work``
processes on the same backlog (see :mod:`bench.workers`).

    python -m bench.worker_scaling [--workers 1,2] [--images 48] [--batch 4]
                                   [--input uncompressed] [--size 0] [--out scaling.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    INPUT_KINDS,
    add_common_arguments,
    apply_threads,
    bench_services,
    make_copies,
    report,
)
from bench.workers import end_to_end
from cxr_common.settings import WorkerSettings, resolve_batching


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=resolve_batching(WorkerSettings(), "cpu")[0])
    parser.add_argument("--input", choices=INPUT_KINDS, default="uncompressed")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cxr-bench-scale-") as d,
        bench_services(Path(d)) as bench,
    ):
        folder = Path(d) / "inputs"
        for n in (int(v) for v in args.workers.split(",")):
            files = make_copies(args.input, args.images, folder / str(n), args.size)
            warm = make_copies(args.input, args.batch * n, folder / str(n), args.size, "warm-")
            e2e = end_to_end(bench, files, warm, batch=args.batch, workers=n)
            rows.append({"workers": n, "batch": args.batch, "img_s": e2e["img_s"]})
    for r in rows:
        r["vs_1_worker"] = r["img_s"] / rows[0]["img_s"]
    summary = {"best_workers": max(rows, key=lambda r: r["img_s"])["workers"]}
    return report(
        "worker_scaling", args, rows, ["workers", "batch", "img_s", "vs_1_worker"], summary
    )


if __name__ == "__main__":
    main()
