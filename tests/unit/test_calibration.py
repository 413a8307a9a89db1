"""Site calibration: threshold selection with a confidence bound; temperature scaling; record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_model import Calibration, CalibrationMismatchError, load_calibration
from training.calibrate import (
    fit_calibration,
    fit_temperature,
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
