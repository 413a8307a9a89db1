"""Build ``card.json`` (the machine-readable model card) from evaluate outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxr_common.clinical import DISCLAIMER
from cxr_model.contract import read_contract

#: The headline metrics `cxr-triage evaluate` prints; the card records these and more.
SUMMARY_KEYS = (
    "n",
    "auc",
    "auc_ci95",
    "threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "accuracy",
    "f1",
    "ece",
    "confusion",
)
KEYS = (*SUMMARY_KEYS, "per_subtype_sensitivity", "uncalibrated")


def build_card(weights_dir: Path, evals: dict[str, Path], extra: dict[str, Any]) -> dict[str, Any]:
    contract = read_contract(weights_dir)
    cal = json.loads((weights_dir / "calibration.json").read_text())
    card: dict[str, Any] = {
        "model": contract.to_json(),
        "calibration": cal,
        "metrics": {},
        "disclaimer": DISCLAIMER,
    }
    for name, d in evals.items():
        m = json.loads((d / "metrics.json").read_text())
        card["metrics"][name] = {k: m[k] for k in KEYS if k in m} | {
            "filter": m.get("filter"),
            "threshold_source": m.get("threshold_source"),
        }
    card.update(extra)
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weights-dir", type=Path, required=True)
    p.add_argument("--eval", action="append", default=[], help="NAME=DIR with metrics.json")
    p.add_argument("--extra", type=Path, default=None, help="JSON merged into the card")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    evals = {k: Path(v) for k, _, v in (e.partition("=") for e in a.eval)}
    extra = json.loads(a.extra.read_text()) if a.extra else {}
    a.out.write_text(json.dumps(build_card(a.weights_dir, evals, extra), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
