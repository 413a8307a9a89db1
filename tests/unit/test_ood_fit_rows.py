"""``cxr-triage ood-fit --fit-filter/--threshold-filter``: a site fits the image check of its own
model on the rows that model was trained on and thresholds it on held-out in-scope rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_model import WEIGHTS_DIR, read_contract
from cxr_model.distribution import load_distribution_check
from cxr_registry import read_image_check
from training.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"


@pytest.mark.slow
def test_the_fit_and_threshold_rows_are_the_ones_named(tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = ["ood-fit", "--data", str(FIXTURES), "--fit-filter", "split=train"]
    args += ["--threshold-filter", "split=val", "--components", "4", "--inversion-limit", "4"]
    args += ["--cache", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out)]
    assert main(args) == 0

    sha = read_contract(WEIGHTS_DIR).sha256
    meta = json.loads((out / "ood.json").read_text())
    fitted = meta["fitted_on"]
    assert fitted["fit_filter"] == "split=train"
    assert fitted["n_fit"] == 16  # the 8 train films, each read two ways
    assert fitted["threshold_filter"] == "split=val, both views"
    assert fitted["n_threshold"] == 2
    assert "of split=val at or below" in meta["threshold_rule"]
    assert meta["inversion"]["fit_filter"].startswith("split=train, both views")
    check = load_distribution_check(out, sha)
    assert check is not None
    assert check.layers == ("blocks.3", "blocks.4", "blocks.5", "blocks.6")
    assert read_image_check(out, sha) == (
        "mahalanobis; pooled + blocks.3, blocks.4, blocks.5, blocks.6; inversion detector; "
        f"distance threshold {check.threshold:.4g}"
    )


def test_a_filter_that_names_no_rows_is_refused_with_the_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ood-fit", "--data", str(FIXTURES), "--threshold-filter", "split=cal"]
    args += ["--cache", str(tmp_path / "cache"), "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    # one line that says what is wrong (earlier tests' log handlers may add noise above it)
    assert err.strip().splitlines()[-1] == (
        f"python -m training.cli ood-fit: no labelled samples in {FIXTURES} with filter "
        "'split=cal' (-v shows where)"
    )
    assert "ValueError: no labelled samples" not in err  # no traceback of the refusal
    assert not (tmp_path / "ood.json").exists()
