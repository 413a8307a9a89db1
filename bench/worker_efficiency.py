"""Worker efficiency: a real worker end to end vs the sum of its own stages, same inputs.

    python -m bench.worker_efficiency [--images 48] [--batch 4] [--input uncompressed]
                                      [--size 0] [--out eff.json]

See :mod:`bench.workers` for what is timed. The ratio is (end-to-end img/s) / (img/s of
the stages run back to back: database claim + write, read + parse, eligibility + decode,
preprocess, forward + heatmap, PNG). Goal 3 of issue 10: >= 0.85.
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
from bench.workers import end_to_end, stages
from cxr_common.settings import WorkerSettings, resolve_batching


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=resolve_batching(WorkerSettings(), "cpu")[0])
    parser.add_argument("--input", choices=INPUT_KINDS, default="uncompressed")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    with (
        tempfile.TemporaryDirectory(prefix="cxr-bench-eff-") as d,
        bench_services(Path(d)) as bench,
    ):
        folder = Path(d) / "inputs"
        files = make_copies(args.input, args.images, folder, args.size, "e2e-")
        warm = make_copies(args.input, args.batch, folder, args.size, "warm-")
        stage_files = make_copies(args.input, args.images, folder, args.size, "stage-")
        e2e = end_to_end(bench, files, warm, batch=args.batch, workers=1)
        per_image = stages(bench, stage_files, batch=args.batch)
    total = sum(per_image.values())
    rows: list[dict[str, Any]] = [
        {"stage": k, "ms_per_img": 1000 * v, "share": v / total} for k, v in per_image.items()
    ]
    rows.append({"stage": "sum of stages", "ms_per_img": 1000 * total, "share": 1.0})
    rows.append({"stage": "end to end (1 worker)", "ms_per_img": 1000 / e2e["img_s"]})
    summary = {
        "end_to_end_img_s": e2e["img_s"],
        "stages_img_s": 1 / total,
        "goal_3_ratio": e2e["img_s"] * total,
    }
    return report("worker_efficiency", args, rows, ["stage", "ms_per_img", "share"], summary)


if __name__ == "__main__":
    main()
