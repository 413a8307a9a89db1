"""Heatmap cost: forward only vs forward + fast CAM vs forward + Grad-CAM, side by side.

    python -m bench.heatmap_cost [--batch 4] [--images 32] [--repeats 3] [--out heat.json]

The inputs are the committed eligible samples, decoded and preprocessed by the project's
code once; each repeat runs the three modes one after another on the same batches (so
drift on a shared machine hits all three alike); the median rate per mode is reported with
its cost relative to forward only. ``--batch`` defaults to the worker's CPU batch size.
Goal 2 of issue 10: forward + heatmap <= 1.3x forward only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import pydicom
import torch

from bench.common import add_common_arguments, apply_threads, median, report
from cxr_common.settings import WorkerSettings, resolve_batching
from cxr_imaging import check_eligibility, load_image
from cxr_model import ScoringModel, load_model
from cxr_model.heatmaps import class_activation_maps, grad_cam
from cxr_triage.demo import sample_files


def sample_batch(model: ScoringModel, images: int) -> torch.Tensor:
    """``images`` preprocessed inputs cycling over the committed eligible samples."""
    tensors = []
    for path in sample_files():
        if check_eligibility(pydicom.dcmread(path, stop_before_pixels=True)).eligible:
            tensors.append(model.preprocess(load_image(path).pixels))
    return torch.stack([tensors[i % len(tensors)] for i in range(images)])


def interleaved_rates(
    runs: dict[str, Callable[[torch.Tensor], Any]],
    batches: list[torch.Tensor],
    images: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Images per second of each mode, ``repeats`` times, the modes interleaved within each
    repeat (so a noisy neighbour slows them alike), after one warm-up batch each (which
    also runs the fast path's one-time head check)."""
    for fn in runs.values():
        fn(batches[0])
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            rates[name].append(images / (time.perf_counter() - t0))
    return rates


def modes(model: ScoringModel) -> dict[str, Callable[[torch.Tensor], Any]]:
    arch = model.contract.architecture
    return {
        "forward": model.logits,
        "forward+fast_cam": lambda b: class_activation_maps(model.net, arch, b),
        "forward+grad_cam": lambda b: grad_cam(model.net, arch, b),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=resolve_batching(WorkerSettings(), "cpu")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    add_common_arguments(parser, inputs=False)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    model = load_model(device="cpu")
    pool = sample_batch(model, args.images)
    batches = [pool[i : i + args.batch] for i in range(0, args.images, args.batch)]
    rates = interleaved_rates(modes(model), batches, args.images, args.repeats)
    forward = median(rates["forward"])
    rows = [
        {
            "mode": name,
            "batch": args.batch,
            "img_s": median(r),
            "ms_per_batch": 1000 * args.batch / median(r),
            "cost_vs_forward": forward / median(r),
        }
        for name, r in rates.items()
    ]
    summary = {
        "goal_2_cost_before_grad_cam": forward / median(rates["forward+grad_cam"]),
        "goal_2_cost_after_fast_cam": forward / median(rates["forward+fast_cam"]),
        "fast_cam_speedup_vs_grad_cam": median(rates["forward+fast_cam"])
        / median(rates["forward+grad_cam"]),
    }
    return report(
        "heatmap_cost",
        args,
        rows,
        ["mode", "batch", "img_s", "ms_per_batch", "cost_vs_forward"],
        summary,
    )


if __name__ == "__main__":
    main()
