"""Fitting a site calibration: temperature (+ bias) scaling and a sensitivity-first threshold.

The threshold is the largest logit cut whose one-sided Clopper-Pearson lower confidence bound
on sensitivity (at ``confidence``) still reaches ``target_sensitivity``. So with 100 site
positives and the defaults the sample must show more than 95% sensitivity, and the target is
expected to hold on the site's unseen studies, not only on the sample.

Each score's uncertainty (:func:`bootstrap_interval`): the same temperature (+ bias) fit
repeated on ``n_boot`` resamples of the calibration sample, drawn with replacement; the
record keeps the replicates and the scoring rule reads a score's interval from them
(``cxr_model.calibration.ScoreInterval``). A plain, not stratified, bootstrap: the share of
positives in a site's sample varies too, and it moves the bias.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import beta

from cxr_model.calibration import Calibration, ScoreInterval

#: Bootstrap resamples for a score's interval, and the seed (a record is reproducible).
N_BOOT = 1000
BOOT_SEED = 20261206


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


def bootstrap_interval(
    y: np.ndarray,
    logits: np.ndarray,
    *,
    with_bias: bool = True,
    n_boot: int = N_BOOT,
    confidence: float = 0.95,
    seed: int = BOOT_SEED,
) -> ScoreInterval:
    """Refit ``sigmoid(logit / T + b)`` on ``n_boot`` resamples (with replacement) of the
    sample; a resample holding one class only is drawn again (it cannot be fitted)."""
    y = np.asarray(y).astype(int)
    z = np.asarray(logits, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("a score interval needs both classes in the calibration sample")
    rng = np.random.default_rng(seed)
    temperatures: list[float] = []
    biases: list[float] = []
    while len(temperatures) < n_boot:
        idx = rng.integers(0, len(y), len(y))
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        t, b = fit_temperature(yb, z[idx], with_bias)
        temperatures.append(t)
        biases.append(b)
    return ScoreInterval(tuple(temperatures), tuple(biases), confidence)


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
    n_boot: int = N_BOOT,
    interval_confidence: float = 0.95,
) -> Calibration:
    """Fit temperature (+bias), the threshold and the score interval (``n_boot`` bootstrap
    replicates; 0 = none) on one labelled site sample."""
    temperature, bias = fit_temperature(y, logits, with_bias)
    interval = (
        bootstrap_interval(
            y, logits, with_bias=with_bias, n_boot=n_boot, confidence=interval_confidence
        )
        if n_boot > 0
        else None
    )
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
    if interval is not None:
        info["interval"] = {"method": "bootstrap", "resamples": n_boot, "seed": BOOT_SEED}
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
        interval=interval,
    )
    # threshold in calibrated-probability space (the map is monotone increasing)
    return Calibration(**{**cal.__dict__, "threshold": cal.probability(choice.logit_threshold)})


def _expit(u: np.ndarray) -> np.ndarray:
    """sigmoid(u), clipped so that exp never overflows."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(u, -700.0, 700.0))))


#: Score bands the interval's coverage is reported in (calibrated probability).
COVERAGE_BANDS = (0.0, 0.1, 0.3, 0.7, 0.9, 1.0)


def interval_coverage(
    cal: Calibration,
    y: np.ndarray,
    logits: np.ndarray,
    *,
    n_draws: int = 4000,
    seed: int = BOOT_SEED,
) -> dict[str, Any]:
    """How well ``cal``'s score intervals describe a labelled sample held out from its fit.

    Per score band: the positives counted against a predictive range for that count, from
    the replicates themselves: draw a replicate, then each study's label as
    Bernoulli(its probability under that replicate); the central ``confidence`` range of the
    simulated counts. With right intervals a band's count lies in its range
    ``confidence`` of the time; a count above or below says the interval is too narrow
    there (or the calibration is off). Also: the median interval width per band and the
    share of studies whose interval holds the probability the held-out sample's own
    temperature (+ bias) fit gives them (that fit has its own sampling error, so this share
    is expected below ``confidence`` even when the intervals are right)."""
    if cal.interval is None:
        raise ValueError(f"calibration {cal.version} has no score interval")
    iv = cal.interval
    y = np.asarray(y).astype(int)
    z = np.asarray(logits, dtype=np.float64)
    scores = [cal.score(float(v)) for v in z]
    p = np.array([s.probability for s in scores])
    lo = np.array([s.lower for s in scores], dtype=np.float64)
    hi = np.array([s.upper for s in scores], dtype=np.float64)
    temps = np.asarray(iv.temperatures)[:, None]
    biases = np.asarray(iv.biases)[:, None]
    rep = _expit(z[None, :] / temps + biases)  # replicates x studies
    rng = np.random.default_rng(seed)
    tail = (1.0 - iv.confidence) / 2.0
    bands = []
    covered = 0
    for a, b in itertools.pairwise(COVERAGE_BANDS):
        m = (p >= a) & ((p < b) if b < 1.0 else (p <= b))
        n = int(m.sum())
        if n == 0:
            continue
        k = int(y[m].sum())
        draws = rep[rng.integers(0, len(rep), n_draws)][:, m]
        counts = (rng.random(draws.shape) < draws).sum(axis=1)
        low, high = (int(v) for v in np.quantile(counts, [tail, 1.0 - tail], method="nearest"))
        inside = low <= k <= high
        covered += inside
        bands.append(
            {
                "band": [a, b],
                "n": n,
                "positives": k,
                "expected": float(p[m].sum()),
                "predictive_range": [low, high],
                "covered": inside,
                "mean_probability": float(p[m].mean()),
                "median_width": float(np.median(hi[m] - lo[m])),
            }
        )
    out: dict[str, Any] = {
        "method": iv.method,
        "replicates": len(iv.temperatures),
        "confidence": iv.confidence,
        "n": len(y),
        "median_width": float(np.median(hi - lo)),
        "bands_covered": covered,
        "bands": bands,
    }
    if len(np.unique(y)) == 2:
        t, b = fit_temperature(y, z)
        own = _expit(z / t + b)
        out["own_fit"] = {"temperature": t, "bias": b}
        out["share_holding_own_fit"] = float(np.mean((own >= lo) & (own <= hi)))
    return out


# ------------------------------------------------------- from the shadow period (0010)

#: Fewest answered studies, and fewest of each class, ``calibrate --from-shadow`` fits on.
MIN_SHADOW_STUDIES = 50
MIN_SHADOW_PER_CLASS = 10


class ShadowSampleError(ValueError):
    """The shadow period has too few answered studies (or one class) to fit on."""


def check_shadow_sample(
    n: int, positives: int, version: str, min_studies: int, min_per_class: int
) -> None:
    """Raise :class:`ShadowSampleError` saying what is missing."""
    negatives = n - positives
    if n < min_studies:
        raise ShadowSampleError(
            f"model {version} has {n} answered studies with a shadow score (pneumonia or no "
            f"pneumonia), fewer than the {min_studies} needed: keep it in shadow until the "
            "radiologists have answered more"
        )
    if positives == 0 or negatives == 0:
        raise ShadowSampleError(
            f"model {version}'s {n} answered studies are all "
            f"{'pneumonia' if negatives == 0 else 'no pneumonia'}: a calibration needs both "
            "answers; keep it in shadow longer"
        )
    if min(positives, negatives) < min_per_class:
        raise ShadowSampleError(
            f"model {version}'s answered studies hold {positives} pneumonia and {negatives} "
            f"no pneumonia, fewer than {min_per_class} of each: keep it in shadow longer"
        )


def fit_from_shadow(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    model_sha256: str,
    model_version: str,
    studies_other: int = 0,
    min_studies: int = MIN_SHADOW_STUDIES,
    min_per_class: int = MIN_SHADOW_PER_CLASS,
    target_sensitivity: float = 0.95,
    confidence: float = 0.95,
    with_bias: bool = True,
    n_boot: int = N_BOOT,
) -> Calibration:
    """A site calibration for ``model_version`` from its shadow scores (one per answered
    study) and the radiologists' answers."""
    y = np.asarray(labels, dtype=int)
    z = np.asarray(logits, dtype=np.float64)
    check_shadow_sample(len(y), int(y.sum()), model_version, min_studies, min_per_class)
    now = datetime.now(UTC)
    return fit_calibration(
        y,
        z,
        model_sha256=model_sha256,
        model_version=model_version,
        target_sensitivity=target_sensitivity,
        confidence=confidence,
        with_bias=with_bias,
        version=f"{model_version[:40]}-shadow-{now:%Y%m%dT%H%M%SZ}",
        fitted_on={
            "source": "shadow",
            "data": "shadow predictions of this version against the radiologists' answers "
            "(the latest answer of each read study; the study's highest shadow score)",
            "studies_other": studies_other,
        },
        n_boot=n_boot,
    )
