"""Golden scores: the committed samples' logits and calibrated probabilities, recorded with
the shipped model, and the one comparison every scoring path is checked with.

``tests/fixtures/golden_scores.json`` holds, for each committed sample that decodes
(``cxr_triage/samples/**/*.dcm`` and ``tests/fixtures/**/*.jpeg``), the raw logit, the
calibrated probability and the flag that ``predict`` gives it, with the model's version and
weights sha256 and the calibration version they came from. ``tests/unit/test_golden_scores.py``
(``predict`` and ``evaluate``) and ``tests/integration/test_golden_scores.py`` (a real worker
fed by the listener) compare their own numbers with these.

Tolerance (:data:`LOGIT_TOL`, :data:`PROBABILITY_TOL`): measured on CPU, the same image's
logit moves by at most 1.5e-5 between torch thread counts (1, 2, the default), batch sizes
(1, 4, all 24 at once) and with or without the heatmap pass (float32 sums taken in another
order). CPU inference has no fp16 setting: the shipped fp16 weights are cast to float32 on
load, which is exact, so they add nothing. 1e-4 leaves a margin of ~7x over that noise,
while a real change moves logits by far more (brightening a fixture by one grey level
moves its logit by 5e-3 to 8e-2). The calibrated probability's slope is at most 1/(4 T)
(T = 3.19), so 1e-4 on a logit is at most 8e-6 on the probability: :data:`PROBABILITY_TOL`
is 1e-5. The goldens are CPU numbers; GPU parity has its own test (``test_gpu_parity``).

Regenerate deliberately (after a change to the model, calibration, decoding or
preprocessing that is meant to move the scores), then review the diff and commit it::

    PYTHONPATH=. .venv/bin/python -m tests.golden_scores --write
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOLDEN_FILE = REPO / "tests" / "fixtures" / "golden_scores.json"
#: Largest accepted difference of a raw logit from its golden value (see module docstring).
LOGIT_TOL = 1e-4
#: Largest accepted difference of a calibrated probability from its golden value.
PROBABILITY_TOL = 1e-5


@dataclass(frozen=True)
class Golden:
    logit: float
    probability: float
    flagged: bool


@dataclass(frozen=True)
class Goldens:
    model_name: str
    model_version: str
    weights_sha256: str
    calibration_version: str
    samples: dict[str, Golden]  # repo-relative path -> golden

    def path(self, name: str) -> Path:
        return REPO / name

    def dicom(self) -> dict[str, Golden]:
        """The samples a DICOM peer can send (what the worker path can score)."""
        return {k: v for k, v in self.samples.items() if k.endswith(".dcm")}


def sample_files() -> list[Path]:
    """Every committed sample image, in a stable order."""
    dicom = sorted((REPO / "cxr_triage" / "samples").rglob("*.dcm"))
    jpeg = sorted((REPO / "tests" / "fixtures").rglob("*.jpeg"))
    return dicom + jpeg


def load_goldens() -> Goldens:
    raw = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))
    return Goldens(
        model_name=raw["model"]["name"],
        model_version=raw["model"]["version"],
        weights_sha256=raw["model"]["sha256"],
        calibration_version=raw["calibration_version"],
        samples={k: Golden(**v) for k, v in raw["samples"].items()},
    )


def mismatches(
    goldens: Goldens,
    observed: Mapping[str, tuple[float, float]],
    path_name: str,
    rounding: float = 0.0,
) -> list[str]:
    """One line per sample whose (logit, probability) differs from its golden value beyond
    the tolerance, naming the sample, the path that scored it and both values; also one
    line per observed sample that has no golden value. ``rounding`` widens both tolerances
    by what the path's own output format rounds away (half a unit of its last decimal)."""
    out: list[str] = []
    logit_tol, prob_tol = LOGIT_TOL + rounding, PROBABILITY_TOL + rounding
    for name, (logit, prob) in sorted(observed.items()):
        gold = goldens.samples.get(name)
        if gold is None:
            out.append(f"{name} ({path_name}): scored {logit:.6f}, but has no golden score")
            continue
        if abs(logit - gold.logit) > logit_tol:
            out.append(
                f"{name} ({path_name}): logit {logit:.6f}, golden {gold.logit:.6f} "
                f"(|diff| {abs(logit - gold.logit):.2e} > {logit_tol:g})"
            )
        if abs(prob - gold.probability) > prob_tol:
            out.append(
                f"{name} ({path_name}): probability {prob:.8f}, golden {gold.probability:.8f} "
                f"(|diff| {abs(prob - gold.probability):.2e} > {prob_tol:g})"
            )
    return out


def record() -> dict[str, Any]:
    """Score every committed sample with the shipped model through ``predict`` (CPU)."""
    from cxr_model import WEIGHTS_DIR, load_calibration, read_contract
    from training.predict import predict_paths

    contract = read_contract(WEIGHTS_DIR)
    cal = load_calibration(None, contract.sha256)
    samples: dict[str, dict[str, Any]] = {}
    for rec in predict_paths(sample_files(), device="cpu"):
        if "error" in rec:  # a sample nothing can decode (it has its own tests)
            continue
        name = Path(rec["path"]).resolve().relative_to(REPO).as_posix()
        samples[name] = {
            "logit": round(float(rec["logit"]), 6),
            "probability": round(float(rec["probability"]), 8),
            "flagged": bool(rec["flagged"]),
        }
    return {
        "about": "tests/golden_scores.py: what these are, the tolerance, how to regenerate",
        "model": {"name": contract.name, "version": contract.version, "sha256": contract.sha256},
        "calibration_version": cal.version,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--write", action="store_true", help=f"rewrite {GOLDEN_FILE.relative_to(REPO)}"
    )
    args = parser.parse_args(argv)
    data = record()
    text = json.dumps(data, indent=2) + "\n"
    if args.write:
        GOLDEN_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {len(data['samples'])} golden scores to {GOLDEN_FILE}")
        return 0
    current = load_goldens() if GOLDEN_FILE.is_file() else None
    if current is None:
        print(f"{GOLDEN_FILE} is missing; run with --write")
        return 1
    observed = {k: (v["logit"], v["probability"]) for k, v in data["samples"].items()}
    problems = mismatches(current, observed, "predict")
    for line in problems:
        print(line)
    print(f"{len(observed)} samples, {len(problems)} differences (pass --write to record)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
