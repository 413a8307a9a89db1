"""Classification metrics (numpy only; tested against scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _rank_average(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties count one half)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank_average(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_ci95(
    y: np.ndarray, score: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the AUC, resampling within each class."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = score[y], score[~y]
    if len(pos) == 0 or len(neg) == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = neg[rng.integers(0, len(neg), len(neg))]
        # P(p > n) + 0.5 P(p == n) via sorting
        ns = np.sort(n)
        lo = np.searchsorted(ns, p, side="left")
        hi = np.searchsorted(ns, p, side="right")
        aucs[b] = (lo.sum() + 0.5 * (hi - lo).sum()) / (len(p) * len(n))
    return float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))


def confusion(y: np.ndarray, flagged: np.ndarray) -> dict[str, int]:
    y = np.asarray(y).astype(bool)
    f = np.asarray(flagged).astype(bool)
    return {
        "tn": int((~y & ~f).sum()),
        "fp": int((~y & f).sum()),
        "fn": int((y & ~f).sum()),
        "tp": int((y & f).sum()),
    }


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins on P(PNEUMONIA): sum_b |B|/N * |mean(y_b) - mean(p_b)|."""
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    idx = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - prob[m].mean())
    return float(ece)


def reliability_bins(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    idx = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "n": int(m.sum()),
                    "mean_prob": float(prob[m].mean()),
                    "frac_pos": float(y[m].mean()),
                }
            )
    return out


def binary_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    subtypes: list[str] | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Every figure in ``metrics.json``: threshold-free and at ``prob >= threshold``."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    flagged = prob >= threshold
    c = confusion(y, flagged)
    tp, tn, fp, fn = c["tp"], c["tn"], c["fp"], c["fn"]
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    ppv, npv = _div(tp, tp + fp), _div(tn, tn + fn)
    lo, hi = auc_ci95(y, prob, n_boot=n_boot)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_pos": int(y.sum()),
        "n_neg": int(len(y) - y.sum()),
        "auc": roc_auc(y, prob),
        "auc_ci95": [lo, hi],
        "threshold": float(threshold),
        "accuracy": _div(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "ece": expected_calibration_error(y, prob),
        "brier": float(np.mean((prob - y) ** 2)),
        "confusion": c,
    }
    if subtypes is not None:
        per: dict[str, Any] = {}
        st = np.asarray(subtypes)
        for name in sorted({s for s, lab in zip(subtypes, y, strict=True) if lab == 1 and s}):
            m = (st == name) & (y == 1)
            per[name] = {"n": int(m.sum()), "sensitivity": _div(int(flagged[m].sum()), m.sum())}
        out["per_subtype_sensitivity"] = per
    return out
