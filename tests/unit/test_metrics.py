"""Metric code against scikit-learn on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from training.metrics import (
    auc_ci95,
    binary_metrics,
    confusion,
    expected_calibration_error,
    roc_auc,
)


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    p[:40] = np.round(p[:40], 1)  # ties
    return y, p


def test_auc_matches_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = case
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_with_all_ties_is_half() -> None:
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_threshold_metrics_match_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = case
    t = 0.5
    pred = (p >= t).astype(int)
    m = binary_metrics(y, p, t, n_boot=200)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert confusion(y, pred) == m["confusion"]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["n"] == len(y)
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi


def test_ece_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95, 0.95])
    # bins: [0,.1): p .05 y 0 -> .05; [.1,.2): .15 -> .15; [.8,.9): .85 vs 1; [.9,1]: .95 vs 1
    expected = (0.05 + 0.15 + 0.15 + 2 * 0.05) / 5
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_subtype_sensitivity() -> None:
    y = np.array([1, 1, 1, 0])
    p = np.array([0.9, 0.2, 0.8, 0.1])
    m = binary_metrics(y, p, 0.5, ["bacteria", "virus", "virus", ""], n_boot=50)
    assert m["per_subtype_sensitivity"] == {
        "bacteria": {"n": 1, "sensitivity": 1.0},
        "virus": {"n": 2, "sensitivity": 0.5},
    }


def test_auc_ci_is_deterministic(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = case
    assert auc_ci95(y, p, 300, seed=1) == auc_ci95(y, p, 300, seed=1)
