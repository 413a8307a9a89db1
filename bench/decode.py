"""Host-side decode throughput per core: the CPU bound of a GPU worker (goal 5).

    python -m bench.decode [--images 8] [--inputs uncompressed,j2k] [--size 0] [--out d.json]

One process, one thread: read + parse + eligibility + decode (``cxr_imaging``) +
preprocess to the model's input, per full-size radiograph. ``ceiling_img_s`` is this rate
times the host's cores (``--cores``, default this machine's): what a GPU worker fed by a
decode process pool on that host could reach at most, against issue 10's 300 studies/s.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from bench.common import (
    INPUT_KINDS,
    add_common_arguments,
    apply_threads,
    make_copies,
    median,
    report,
)
from cxr_imaging import check_eligibility, decode_dataset
from cxr_model import load_model

GOAL_IMG_S = 300


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", default=",".join(INPUT_KINDS))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads or 1)
    model = load_model(device="cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-decode-") as d:
        for kind in args.inputs.split(","):
            files = make_copies(kind, args.images, Path(d), args.size)
            rates = []
            spent = {"read_parse": 0.0, "decode": 0.0, "preprocess": 0.0}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for path in files:
                    t1 = time.perf_counter()
                    ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
                    t2 = time.perf_counter()
                    if not check_eligibility(ds).eligible:
                        raise RuntimeError("generated input not eligible")
                    pixels = decode_dataset(ds).pixels
                    t3 = time.perf_counter()
                    model.preprocess(pixels)
                    t4 = time.perf_counter()
                    for stage, dt in zip(spent, (t2 - t1, t3 - t2, t4 - t3), strict=True):
                        spent[stage] += dt
                rates.append(len(files) / (time.perf_counter() - t0))
            rate = median(rates)
            n = len(files) * args.repeats
            rows.append(
                {
                    "input": kind,
                    "mb_per_file": round(files[0].stat().st_size / 1e6, 2),
                    **{f"{k}_ms": 1000 * v / n for k, v in spent.items()},
                    "img_s_per_core": rate,
                    "cores": args.cores,
                    "ceiling_img_s": rate * args.cores,
                    "vs_goal_300": rate * args.cores / GOAL_IMG_S,
                }
            )
    summary = {f"{r['input']}_ceiling_img_s": r["ceiling_img_s"] for r in rows}
    return report(
        "decode",
        args,
        rows,
        [
            "input",
            "mb_per_file",
            "read_parse_ms",
            "decode_ms",
            "preprocess_ms",
            "img_s_per_core",
            "cores",
            "ceiling_img_s",
            "vs_goal_300",
        ],
        summary,
    )


if __name__ == "__main__":
    main()
