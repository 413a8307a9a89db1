"""Fitting a site calibration: temperature (+ bias) scaling and a sensitivity-first threshold.

The threshold is the largest logit cut whose one-sided Clopper-Pearson lower confidence bound
on sensitivity (at ``confidence``) still reaches ``target_sensitivity``. So with 100 site
positives and the defaults the sample must show more than 95% sensitivity, and the target is
expected to hold on the site's unseen studies, not only on the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import beta

from cxr_model.calibration import Calibration


def sensitivity_lower_bound(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound for k successes out of n."""
    if n == 0 or k == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, k, n - k + 1))


@dataclass(frozen=True)
class ThresholdChoice:
    logit_threshold: float
    sample_sensitivity: float
    sample_specificity: float
    sensitivity_lcb: float
    attainable: bool


def select_threshold(
    y: np.ndarray, logits: np.ndarray, target: float = 0.95, confidence: float = 0.95
) -> ThresholdChoice:
    """Highest threshold (flag ``logit >= t``) with sensitivity LCB >= ``target``."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(logits, dtype=np.float64)
    pos = np.sort(s[y])[::-1]  # descending
    neg = s[~y]
    n = len(pos)
    if n == 0:
        raise ValueError("threshold selection needs at least one positive study")
    chosen = None
    for k in range(1, n + 1):  # flag the top-k positives: t = pos[k-1]
        if k < n and pos[k] == pos[k - 1]:
            continue  # ties: the cut must include all tied positives
        if sensitivity_lower_bound(k, n, confidence) >= target:
            chosen = k
            break
    attainable = chosen is not None
    k = chosen if chosen is not None else n
    t = float(pos[k - 1])
    spec = float((neg < t).mean()) if len(neg) else float("nan")
    return ThresholdChoice(t, k / n, spec, sensitivity_lower_bound(k, n, confidence), attainable)


def fit_temperature(
    y: np.ndarray, logits: np.ndarray, with_bias: bool = True
) -> tuple[float, float]:
    """Minimise the NLL of ``sigmoid(logit / T + b)``; returns (T, b)."""
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)

    def nll(params: np.ndarray) -> float:
        a = math.exp(params[0])
        b = params[1] if with_bias else 0.0
        u = z * a + b
        return float(np.mean(np.logaddexp(0.0, u) - y * u))

    res = minimize(
        nll,
        x0=np.array([0.0, 0.0]),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000},
    )
    a = math.exp(float(res.x[0]))
    return 1.0 / a, float(res.x[1]) if with_bias else 0.0


def fit_calibration(
    y: np.ndarray,
    logits: np.ndarray,
    *,
    model_sha256: str,
    model_version: str,
    target_sensitivity: float = 0.95,
    confidence: float = 0.95,
    with_bias: bool = True,
    version: str | None = None,
    fitted_on: dict[str, Any] | None = None,
) -> Calibration:
    """Fit temperature (+bias) and the threshold on one labelled site sample."""
    temperature, bias = fit_temperature(y, logits, with_bias)
    choice = select_threshold(y, logits, target_sensitivity, confidence)
    now = datetime.now(UTC)
    info = dict(fitted_on or {})
    info.update(
        {
            "n": int(len(y)),
            "n_pos": int(np.sum(y)),
            "n_neg": int(len(y) - np.sum(y)),
            "sample_sensitivity": choice.sample_sensitivity,
            "sample_specificity": choice.sample_specificity,
            "sensitivity_lcb": choice.sensitivity_lcb,
            "target_attainable": choice.attainable,
            "model_version": model_version,
        }
    )
    cal = Calibration(
        version=version or f"{model_version}-site-{now:%Y%m%dT%H%M%SZ}",
        model_sha256=model_sha256,
        temperature=temperature,
        bias=bias,
        threshold=0.0,
        logit_threshold=choice.logit_threshold,
        target_sensitivity=target_sensitivity,
        confidence=confidence,
        method="temperature+bias" if with_bias else "temperature",
        fitted_on=info,
        created_at=now.isoformat(timespec="seconds"),
    )
    # threshold in calibrated-probability space (the map is monotone increasing)
    return Calibration(**{**cal.__dict__, "threshold": cal.probability(choice.logit_threshold)})
