"""Golden scores through ``predict`` and ``evaluate``: every committed sample's logit and
calibrated probability equal the recorded ones (``tests/golden_scores.py``: the file, the
tolerance and how to regenerate it). The worker path is in
``tests/integration/test_golden_scores.py``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxr_model import WEIGHTS_DIR, load_calibration, read_contract
from tests.golden_scores import REPO, Goldens, load_goldens, mismatches, sample_files


@pytest.fixture(scope="module")
def goldens() -> Goldens:
    return load_goldens()


def test_goldens_belong_to_the_shipped_model_and_cover_the_samples(goldens: Goldens) -> None:
    contract = read_contract(WEIGHTS_DIR)
    assert (goldens.model_version, goldens.weights_sha256) == (contract.version, contract.sha256)
    assert goldens.calibration_version == load_calibration(None, contract.sha256).version
    names = {p.relative_to(REPO).as_posix() for p in sample_files()}
    # every sample but the one nothing here decodes (its own tests cover it)
    assert names - set(goldens.samples) == {"cxr_triage/samples/nm-jpeg-extended.dcm"}
    flags = {g.flagged for g in goldens.samples.values()}
    assert flags == {True, False}  # the goldens pin both sides of the threshold


def test_predict_matches_the_goldens(goldens: Goldens) -> None:
    from training.predict import predict_paths

    records = predict_paths([goldens.path(n) for n in goldens.samples], device="cpu")
    observed: dict[str, tuple[float, float]] = {}
    flags: dict[str, bool] = {}
    for rec in records:
        name = Path(rec["path"]).relative_to(REPO).as_posix()
        assert "error" not in rec, (name, rec.get("error"))
        assert rec["model_version"] == goldens.model_version
        assert rec["calibration_version"] == goldens.calibration_version
        observed[name] = (rec["logit"], rec["probability"])
        flags[name] = rec["flagged"]
    assert set(observed) == set(goldens.samples)
    assert mismatches(goldens, observed, "predict") == []
    assert flags == {n: g.flagged for n, g in goldens.samples.items()}


def test_evaluate_matches_the_goldens(goldens: Goldens, tmp_path: Path) -> None:
    """``evaluate`` resizes through its own cache and scores in one batch without
    heatmaps: the same numbers, read from the predictions.csv it writes (5 decimals)."""
    from training.evaluate import evaluate

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for name, gold in goldens.samples.items():
            # the label only feeds the metrics; the flag gives both classes
            w.writerow([str(goldens.path(name)), int(gold.flagged)])
    out = tmp_path / "eval"
    metrics = evaluate(
        str(labels), None, out, cache_dir=tmp_path / "cache", device="cpu", cams=False
    )
    assert metrics["models"][0]["sha256"] == goldens.weights_sha256
    assert metrics["calibration"]["version"] == goldens.calibration_version
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    observed = {
        Path(r["path"]).relative_to(REPO).as_posix(): (float(r["logit"]), float(r["probability"]))
        for r in rows
    }
    assert set(observed) == set(goldens.samples)
    assert mismatches(goldens, observed, "evaluate", rounding=5e-6) == []


def test_a_drifted_score_is_named_with_both_values(goldens: Goldens) -> None:
    name, gold = next(iter(goldens.samples.items()))
    (line,) = mismatches(goldens, {name: (gold.logit + 2e-4, gold.probability)}, "predict")
    assert name in line
    assert f"{gold.logit:.6f}" in line
    assert f"{gold.logit + 2e-4:.6f}" in line
    assert mismatches(goldens, {name: (gold.logit + 5e-5, gold.probability)}, "predict") == []
