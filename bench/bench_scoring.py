"""Worker scoring throughput by batch size (forward + Grad-CAM backward), in one run.

    .venv/bin/python bench/bench_scoring.py [--sizes 1,4,8,16] [--images 64] [--no-heatmaps]

Reports images/s for each batch size and the ratio to batch size 1, measured in the
same process on the same inputs (compare ratios, not absolute numbers, on a shared box).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from cxr_imaging import load_image
from cxr_model import load_model
from cxr_triage.demo import sample_files


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--images", type=int, default=64, help="images scored per batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-heatmaps", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    model = load_model(device=args.device)
    tensors = []
    for path in sample_files():
        try:
            tensors.append(model.preprocess(load_image(path).pixels))
        except Exception:  # noqa: BLE001 - ineligible/undecodable samples are just skipped
            continue
    pool = torch.stack([tensors[i % len(tensors)] for i in range(args.images)])
    heat = not args.no_heatmaps
    model.score_batch(pool[:2], with_heatmaps=heat)  # warm-up
    print(
        f"device={model.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()} heatmaps={heat} images={args.images}"
    )
    base = None
    for size in [int(s) for s in args.sizes.split(",")]:
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for start in range(0, args.images, size):
                model.score_batch(pool[start : start + size], with_heatmaps=heat)
            rates.append(args.images / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        base = base or rate
        print(f"batch={size:3d}  {rate:7.1f} img/s  (x{rate / base:.2f} vs batch 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
