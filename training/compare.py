"""Compare finished models the way the site would use them.

For each candidate (a weights folder, or ``a+b`` for an averaged ensemble), with or without
TTA: fit the site calibration on the dev rows, then report AUC, sensitivity, specificity and ECE
on the check rows. Usage::

    python -m training.compare --data labels.csv --dev split=test,site_fold=dev \
        --check split=test,site_fold=check runs/a/model runs/b/model runs/a/model+runs/b/model
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cxr_model import ScoringModel, load_model
from training.calibrate import fit_calibration
from training.data import load_resized, load_samples
from training.evaluate import model_logits
from training.metrics import binary_metrics, roc_auc


def load_candidate(candidate: str) -> list[ScoringModel]:
    """The models of a candidate (``a`` or ``a+b``: an averaged ensemble)."""
    return [load_model(Path(p), "cpu") for p in candidate.split("+")]


def candidate_logits(
    models: Sequence[ScoringModel], pixels: Callable[[int], np.ndarray], tta: bool
) -> np.ndarray:
    """Mean logit of a candidate's models, each fed at its own input size."""
    each = [model_logits(m, pixels(m.contract.input_size), tta) for m in models]
    mean: np.ndarray = np.mean(each, axis=0).astype(np.float32)
    return mean


def compare(
    data: str, dev: str, check: str, candidates: list[str], tta: bool, cache: Path
) -> list[dict[str, Any]]:
    samples = {"dev": load_samples(data, dev), "check": load_samples(data, check)}
    images: dict[tuple[str, int], np.ndarray] = {}

    def pixels(name: str, size: int) -> np.ndarray:
        """The set's images at one model's input size (each size decoded and cached once)."""
        if (name, size) not in images:
            images[(name, size)] = load_resized(samples[name], size, cache)
        return images[(name, size)]

    sets = {k: (np.array([s.label for s in v]), [s.subtype for s in v]) for k, v in samples.items()}
    rows = []
    for cand in candidates:
        models = load_candidate(cand)
        logits = {k: candidate_logits(models, partial(pixels, k), tta) for k in sets}
        y_dev, y_chk = sets["dev"][0], sets["check"][0]
        cal = fit_calibration(y_dev, logits["dev"], model_sha256="-", model_version=cand)
        prob = np.array([cal.probability(z) for z in logits["check"]])
        m = binary_metrics(y_chk, prob, cal.threshold, sets["check"][1], n_boot=1000)
        rows.append(
            {
                "candidate": cand,
                "tta": tta,
                "dev_auc": roc_auc(y_dev, logits["dev"]),
                "check_auc": m["auc"],
                "check_auc_ci95": m["auc_ci95"],
                "check_sensitivity": m["sensitivity"],
                "check_specificity": m["specificity"],
                "check_ece": m["ece"],
                "dev_threshold_sample_spec": cal.fitted_on["sample_specificity"],
                "temperature": cal.temperature,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--dev", default="split=test,site_fold=dev")
    p.add_argument("--check", default="split=test,site_fold=check")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("candidates", nargs="+")
    a = p.parse_args(argv)
    rows = compare(a.data, a.dev, a.check, a.candidates, a.tta, a.cache_dir)
    if a.out:
        with a.out.open("a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
