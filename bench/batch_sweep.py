"""Batch-size sweep: scoring alone (forward + heatmap, in this process, the committed
samples) and one real worker end to end (see :mod:`bench.workers`) for each maximum batch.

    python -m bench.batch_sweep [--batches 1,2,4,8] [--images 32] [--end-to-end-images 32]
                                [--input uncompressed] [--size 0] [--out sweep.json]

``--end-to-end-images 0`` measures scoring alone. The worker's CPU default batch comes
from this table (``resolve_batching``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    INPUT_KINDS,
    add_common_arguments,
    apply_threads,
    bench_services,
    make_copies,
    median,
    report,
)
from bench.heatmap_cost import sample_batch
from bench.workers import end_to_end
from cxr_model import load_model


def scoring_rates(batches: list[int], images: int, repeats: int) -> dict[int, float]:
    model = load_model(device="cpu")
    pool = sample_batch(model, images)
    rates: dict[int, list[float]] = {b: [] for b in batches}
    for b in batches:
        model.score_batch(pool[:b])  # warm-up at this shape
    for _ in range(repeats):
        for b in batches:
            t0 = time.perf_counter()
            for start in range(0, images, b):
                model.score_batch(pool[start : start + b])
            rates[b].append(images / (time.perf_counter() - t0))
    return {b: median(r) for b, r in rates.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end-images", type=int, default=32)
    parser.add_argument("--input", choices=INPUT_KINDS, default="uncompressed")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    batches = [int(v) for v in args.batches.split(",")]
    scoring = scoring_rates(batches, args.images, args.repeats)
    rows: list[dict[str, Any]] = [
        {
            "batch": b,
            "scoring_img_s": scoring[b],
            "scoring_vs_batch_1": scoring[b] / scoring[batches[0]],
        }
        for b in batches
    ]
    if args.end_to_end_images:
        with (
            tempfile.TemporaryDirectory(prefix="cxr-bench-sweep-") as d,
            bench_services(Path(d)) as bench,
        ):
            folder = Path(d) / "inputs"
            for row in rows:
                b = row["batch"]
                files = make_copies(args.input, args.end_to_end_images, folder / str(b), args.size)
                warm = make_copies(args.input, b, folder / str(b), args.size, "warm-")
                row["end_to_end_img_s"] = end_to_end(bench, files, warm, batch=b, workers=1)[
                    "img_s"
                ]
    best = max(rows, key=lambda r: r.get("end_to_end_img_s", r["scoring_img_s"]))
    return report(
        "batch_sweep",
        args,
        rows,
        ["batch", "scoring_img_s", "scoring_vs_batch_1", "end_to_end_img_s"],
        {"best_batch": best["batch"]},
    )


if __name__ == "__main__":
    main()
