"""Site calibration: threshold selection with a confidence bound; temperature scaling; record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cxr_model import Calibration, CalibrationMismatchError, load_calibration
from training.calibrate import (
    ShadowSampleError,
    fit_calibration,
    fit_from_shadow,
    fit_temperature,
    interval_coverage,
    select_threshold,
    sensitivity_lower_bound,
)
from training.metrics import expected_calibration_error


def _draw(rng: np.random.Generator, n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    z = np.r_[rng.normal(2.0, 1.2, n_pos), rng.normal(-2.0, 1.2, n_neg)]
    return y, z


def test_threshold_meets_target_sensitivity_with_bound() -> None:
    rng = np.random.default_rng(0)
    y, z = _draw(rng, 400, 300)
    choice = select_threshold(y, z, target=0.95, confidence=0.95)
    assert choice.attainable
    sens = float((z[y == 1] >= choice.logit_threshold).mean())
    assert sens == pytest.approx(choice.sample_sensitivity)
    assert choice.sensitivity_lcb >= 0.95
    assert sens > 0.95  # the bound demands more than the point target on the sample
    # and the target holds on unseen studies from the same site
    y2, z2 = _draw(np.random.default_rng(1), 5000, 10)
    assert float((z2[y2 == 1] >= choice.logit_threshold).mean()) >= 0.95


def test_threshold_unattainable_flags_every_positive() -> None:
    y = np.array([1] * 20 + [0] * 20)
    z = np.r_[np.linspace(0, 1, 20), np.linspace(-1, 0.5, 20)]
    choice = select_threshold(y, z, 0.95, 0.95)  # 20/20 gives LCB 0.861 < 0.95
    assert not choice.attainable
    assert choice.logit_threshold == pytest.approx(0.0)
    assert choice.sample_sensitivity == 1.0


def test_lower_bound_values() -> None:
    assert sensitivity_lower_bound(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100))
    assert sensitivity_lower_bound(0, 10, 0.95) == 0.0


def test_temperature_lowers_ece_on_overconfident_scores() -> None:
    rng = np.random.default_rng(2)
    true_logit = rng.normal(0, 2.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    shown = 3.0 * true_logit + 1.0  # overconfident and shifted
    before = expected_calibration_error(y, 1 / (1 + np.exp(-shown)))
    t, b = fit_temperature(y, shown)
    after = expected_calibration_error(y, 1 / (1 + np.exp(-(shown / t + b))))
    assert t == pytest.approx(3.0, rel=0.15)
    assert after < before / 3
    assert after < 0.03


def test_record_roundtrip_threshold_and_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y, z = _draw(rng, 300, 300)
    cal = fit_calibration(y, z, model_sha256="a" * 64, model_version="m1", version="site-1")
    assert cal.flag(cal.probability(cal.logit_threshold))
    assert not cal.flag(cal.probability(cal.logit_threshold - 1e-3))
    path = tmp_path / "calibration.json"
    cal.save(path)
    loaded = load_calibration(path, model_sha256="a" * 64)
    assert loaded == cal
    assert isinstance(loaded, Calibration)
    assert loaded.version == "site-1"
    with pytest.raises(CalibrationMismatchError):
        load_calibration(path, model_sha256="b" * 64)


# ------------------------------------------------------------------ score intervals


def test_interval_is_saved_with_the_record_and_brackets_each_score(tmp_path: Path) -> None:
    y, z = _draw(np.random.default_rng(5), 80, 80)
    cal = fit_calibration(y, z, model_sha256="a" * 64, model_version="m1", n_boot=200)
    assert cal.interval is not None
    assert len(cal.interval.temperatures) == 200
    path = tmp_path / "calibration.json"
    cal.save(path)
    loaded = load_calibration(path, model_sha256="a" * 64)
    assert loaded == cal
    for logit in (-6.0, -1.0, 0.0, 0.5, 4.0):
        s = loaded.score(logit)
        assert s.lower is not None
        assert s.upper is not None
        assert 0.0 <= s.lower <= s.probability <= s.upper <= 1.0
        assert s.upper - s.lower > 0.0
    # no replicates, no interval (records made before intervals still load)
    bare = fit_calibration(y, z, model_sha256="a" * 64, model_version="m1", n_boot=0)
    assert bare.interval is None
    assert bare.score(0.0).lower is None
    assert "interval" not in bare.to_json()


def test_interval_narrows_with_a_larger_calibration_sample_and_widens_mid_range() -> None:
    small = fit_calibration(
        *_draw(np.random.default_rng(6), 30, 30), model_sha256="a", model_version="m", n_boot=200
    )
    large = fit_calibration(
        *_draw(np.random.default_rng(7), 1500, 1500),
        model_sha256="a",
        model_version="m",
        n_boot=200,
    )

    def width(cal: Calibration, logit: float) -> float:
        s = cal.score(logit)
        assert s.lower is not None
        assert s.upper is not None
        return s.upper - s.lower

    assert width(small, 0.0) > 2.5 * width(large, 0.0)
    assert width(large, 0.0) > width(large, 8.0)  # mid-range is the uncertain part


def test_interval_covers_held_out_counts_when_the_map_is_right() -> None:
    rng = np.random.default_rng(8)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(0.0, 3.0, n)
        return (rng.random(n) < 1 / (1 + np.exp(-(z / 2.0 - 0.5)))).astype(int), z

    y, z = draw(300)
    cal = fit_calibration(y, z, model_sha256="a", model_version="m", n_boot=300)
    y2, z2 = draw(300)
    report = interval_coverage(cal, y2, z2)
    assert report["n"] == 300
    assert report["bands_covered"] >= len(report["bands"]) - 1
    for band in report["bands"]:
        low, high = band["predictive_range"]
        assert low <= band["expected"] <= high
    # a miscalibrated record (fit and replicates shifted) is caught in at least one band
    assert cal.interval is not None
    moved = replace(cal.interval, biases=tuple(b + 1.5 for b in cal.interval.biases))
    shifted = replace(cal, bias=cal.bias + 1.5, interval=moved)
    assert interval_coverage(shifted, y2, z2)["bands_covered"] < len(report["bands"])


def test_shipped_calibration_carries_its_interval_and_the_same_map() -> None:
    cal = load_calibration()
    assert cal.interval is not None
    assert len(cal.interval.temperatures) == 1000
    assert cal.interval.confidence == 0.95
    # the map and threshold are those validated before the interval was added
    assert cal.temperature == pytest.approx(3.1896661863849096)
    assert cal.bias == pytest.approx(-2.3399455410287984)
    assert cal.threshold == pytest.approx(0.28339776679592343)
    mid = cal.score(cal.logit_threshold)
    high = cal.score(30.0)
    assert mid.lower is not None
    assert mid.upper is not None
    assert high.lower is not None
    assert high.upper is not None
    assert mid.upper - mid.lower > 0.1
    assert high.upper - high.lower < 0.01


@pytest.mark.parametrize(
    ("n", "positives", "message"),
    [
        (49, 20, "fewer than the 50 needed"),
        (60, 60, "all pneumonia"),
        (60, 0, "all no pneumonia"),
        (60, 5, "fewer than 10 of each"),
    ],
)
def test_a_shadow_sample_too_small_or_of_one_class_is_refused(
    n: int, positives: int, message: str
) -> None:
    y = np.r_[np.ones(positives, int), np.zeros(n - positives, int)]
    z = np.linspace(-3, 3, n)
    with pytest.raises(ShadowSampleError, match=message):
        fit_from_shadow(z, y, model_sha256="a", model_version="2.0")


def test_a_shadow_fit_is_versioned_for_its_model() -> None:
    y, z = _draw(np.random.default_rng(9), 40, 40)
    cal = fit_from_shadow(z, y, model_sha256="a" * 64, model_version="2.0", n_boot=50)
    assert cal.version.startswith("2.0-shadow-")
    assert len(cal.version) <= 64
    assert cal.fitted_on["source"] == "shadow"
    assert (cal.fitted_on["n"], cal.fitted_on["n_pos"]) == (80, 40)
    assert cal.interval is not None
