"""Cost of the image-based distribution check on the worker's scoring step.

    python -m bench.distribution_cost [--batch 4] [--images 32] [--repeats 5] [--threads 1]

The inputs are the committed eligible samples, decoded and preprocessed once. Each repeat
runs, one after another on the same batches (so drift on a shared machine hits all alike):

* ``before``: forward + fast CAM, exactly what ``ScoringModel.score_batch`` ran before the
  check (:func:`cxr_model.heatmaps.class_activation_maps`);
* ``hook only``: ``score_batch`` with the pooled-feature hook but no statistics;
* ``with check``: ``score_batch`` with the shipped statistics (``ood.json``): the hook plus
  the distance of every image and, when shipped, its inversion score (a dot product).

On a loaded machine the three rates differ by noise; ``distance_ms_per_image``,
``inversion_ms_per_image`` and ``stage_hooks_ms_per_image`` (each statistic alone, and the
stage hooks' own arithmetic on one forward's outputs, timed over many calls) say what the
check itself costs (``check_share_of_before``: all three, as a share of the per-image
scoring cost).

The median rate per mode is reported with its cost relative to ``before``. Goal (issue 21):
the check adds at most 5 % to the per-image cost, i.e. ``with check`` / ``before`` <= 1.05.
Scoring is the part of the worker's per-image cost the check touches; decoding, the PNG and
the database come on top and make the share smaller still.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.common import add_common_arguments, apply_threads, median, report
from bench.heatmap_cost import interleaved_rates, sample_batch
from cxr_common.settings import WorkerSettings, resolve_batching
from cxr_model import ScoringModel, load_model
from cxr_model.heatmaps import class_activation_maps


def modes(model: ScoringModel) -> dict[str, Callable[[torch.Tensor], Any]]:
    arch = model.contract.architecture
    check = model.distribution
    if check is None:
        raise SystemExit("the shipped model has no distribution check (ood.json)")

    def with_stats(b: torch.Tensor) -> Any:
        model.distribution = check
        return model.score_batch(b)

    def hook_only(b: torch.Tensor) -> Any:
        model.distribution = None
        try:
            return model.score_batch(b)
        finally:
            model.distribution = check

    return {
        "before": lambda b: class_activation_maps(model.net, arch, b),
        "hook only": hook_only,
        "with check": with_stats,
    }


def stage_hooks_ms(model: ScoringModel, batch: torch.Tensor, n_calls: int) -> float:
    """Per image, what the hooks of :func:`cxr_model.distribution.capture_features` compute
    beyond the pooled features: the spatial mean of each stage the check reads and the
    concatenation, timed on the stage outputs of one forward pass (0 without stages)."""
    check = model.distribution
    if check is None or not check.layers:
        return 0.0
    modules = dict(model.net.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, o, n=n: outputs.__setitem__(n, o))
        for n in check.layers
    ]
    try:
        model.logits(batch)
    finally:
        for h in handles:
            h.remove()
    pooled = torch.zeros(batch.shape[0], check.feature_dims[0])
    t0 = time.perf_counter()
    for _ in range(n_calls):
        parts = [outputs[n].detach().float().mean(dim=(2, 3)) for n in check.layers]
        torch.cat([pooled, *parts], dim=1)
    return 1000 * (time.perf_counter() - t0) / (n_calls * int(batch.shape[0]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=resolve_batching(WorkerSettings(), "cpu")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    add_common_arguments(parser, inputs=False)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    model = load_model(device="cpu")
    pool = sample_batch(model, args.images)
    batches = [pool[i : i + args.batch] for i in range(0, args.images, args.batch)]
    rates = interleaved_rates(modes(model), batches, args.images, args.repeats)
    before = median(rates["before"])
    rows = [
        {
            "mode": name,
            "batch": args.batch,
            "img_s": median(r),
            "ms_per_image": 1000 / median(r),
            "cost_vs_before": before / median(r),
        }
        for name, r in rates.items()
    ]
    check = model.distribution
    assert check is not None
    # the distance alone (no forward pass): a noise-free view of what the check adds
    feats = [r.features for r in model.score_batch(batches[0]) if r.features is not None]
    n_calls = 200
    t0 = time.perf_counter()
    for _ in range(n_calls):
        check.distances(np.stack(feats))
    distance_ms = 1000 * (time.perf_counter() - t0) / (n_calls * len(feats))
    # the inversion detector alone (a dot product on the same features), when shipped
    inversion_ms = 0.0
    if check.inversion_threshold is not None:
        t0 = time.perf_counter()
        for _ in range(n_calls):
            check.inversion_scores(np.stack(feats))
        inversion_ms = 1000 * (time.perf_counter() - t0) / (n_calls * len(feats))
    hooks_ms = stage_hooks_ms(model, batches[0], n_calls)
    summary = {
        "method": check.method,
        "stages": ",".join(check.layers) or "none",
        "inversion_detector": check.inversion_threshold is not None,
        "distance_ms_per_image": distance_ms,
        "inversion_ms_per_image": inversion_ms,
        "stage_hooks_ms_per_image": hooks_ms,
        "distance_share_of_before": distance_ms / (1000 / before),
        "check_share_of_before": (distance_ms + inversion_ms + hooks_ms) / (1000 / before),
        # issue 21: at most 1.05
        "goal_21_distribution_check_cost": before / median(rates["with check"]),
    }
    return report(
        "distribution_cost",
        args,
        rows,
        ["mode", "batch", "img_s", "ms_per_image", "cost_vs_before"],
        summary,
    )


if __name__ == "__main__":
    main()
