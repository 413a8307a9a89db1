"""Site calibration record: temperature (+ bias) scaling and an operating threshold.

The record is stored as JSON (``calibration.json`` next to the shipped weights) and is tied to
one model by its weights sha256. Calibrated probability::

    p = sigmoid(logit / temperature + bias)

An eligible image is flagged when ``p >= threshold``: :meth:`Calibration.score` is that one
rule, used by the worker, ``predict`` and ``evaluate``.

Uncertainty (:class:`ScoreInterval`): a record may carry the bootstrap replicates of its own
fit, ``(temperature_i, bias_i)`` refitted on resamples (with replacement) of the calibration
sample. A score's interval is the central ``confidence`` range of
``sigmoid(logit / temperature_i + bias_i)`` over the replicates: how much the calibrated
probability of that logit moves when the site's calibration sample is drawn again. It is
wide where the sample holds few studies (mid-range scores of a well-separating model, a
small shadow sample) and narrow where it holds many; the model card reports its coverage
on held-out site studies. Records without replicates give no interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cxr_common.clinical import DISCLAIMER
from cxr_model.contract import WEIGHTS_DIR, read_contract
from cxr_model.errors import CalibrationMismatchError, ContractError

SCHEMA = "cxr-triage/calibration/1"


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class CalibratedScore:
    """One image's logit read through a calibration record; ``lower`` and ``upper`` bound
    the probability (:class:`ScoreInterval`), None when the record has no interval."""

    logit: float
    probability: float
    threshold: float
    flagged: bool
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class ScoreInterval:
    """Bootstrap replicates of a calibration fit: the interval of each calibrated score."""

    temperatures: tuple[float, ...]
    biases: tuple[float, ...]
    confidence: float = 0.95
    method: str = "bootstrap"

    @cached_property
    def _replicates(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return (
            1.0 / np.asarray(self.temperatures, dtype=np.float64),
            np.asarray(self.biases, dtype=np.float64),
        )

    def bounds(self, logit: float, probability: float) -> tuple[float, float]:
        """The central ``confidence`` range of the replicates' probabilities for ``logit``,
        widened to include ``probability`` (the record's own fit)."""
        inverse, biases = self._replicates
        u = np.clip(float(logit) * inverse + biases, -700.0, 700.0)  # exp stays finite
        values = np.sort(1.0 / (1.0 + np.exp(-u)))
        tail = (1.0 - self.confidence) / 2.0
        lower, upper = _quantile(values, tail), _quantile(values, 1.0 - tail)
        return min(lower, probability), max(upper, probability)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreInterval:
        temperatures = tuple(float(t) for t in data["temperatures"])
        biases = tuple(float(b) for b in data["biases"])
        confidence = float(data.get("confidence", 0.95))
        if not temperatures or len(temperatures) != len(biases):
            raise ValueError("interval replicates: temperatures and biases must pair up")
        if not all(t > 0 and math.isfinite(t) for t in temperatures):
            raise ValueError("interval replicates: temperatures must be positive")
        if not 0.0 < confidence < 1.0:
            raise ValueError("interval confidence must be in (0, 1)")
        return cls(temperatures, biases, confidence, str(data.get("method", "bootstrap")))


def _quantile(values: npt.NDArray[np.float64], q: float) -> float:
    """Linear-interpolation quantile of sorted ``values`` (numpy's default rule)."""
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return float(values[low] + (values[high] - values[low]) * (pos - low))


@dataclass(frozen=True)
class Calibration:
    """A versioned calibration record for one model."""

    version: str
    model_sha256: str
    temperature: float
    bias: float
    threshold: float
    logit_threshold: float
    target_sensitivity: float
    confidence: float
    method: str = "temperature+bias"
    fitted_on: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    interval: ScoreInterval | None = None

    def probability(self, logit: float) -> float:
        """Calibrated probability of PNEUMONIA for one raw logit."""
        return _sigmoid(float(logit) / self.temperature + self.bias)

    def flag(self, prob: float) -> bool:
        """True when the calibrated probability reaches the operating threshold."""
        return float(prob) >= self.threshold

    def score(self, logit: float, *, eligible: bool = True) -> CalibratedScore:
        """The scoring rule: calibrated probability, flagged when the image is eligible and
        the probability reaches the operating threshold. (The worker never scores an image
        that is not eligible; ``predict`` reports its probability, unflagged.)"""
        probability = self.probability(logit)
        flagged = eligible and self.flag(probability)
        if self.interval is None:
            return CalibratedScore(float(logit), probability, self.threshold, flagged)
        lower, upper = self.interval.bounds(logit, probability)
        return CalibratedScore(float(logit), probability, self.threshold, flagged, lower, upper)

    @classmethod
    def uncalibrated(cls, threshold: float, model_sha256: str = "") -> Calibration:
        """The plain sigmoid at ``threshold`` (a model's validation threshold), for the
        training tools when a model has no site calibration yet. Never saved or shipped."""
        t = min(max(float(threshold), 1e-12), 1.0 - 1e-12)
        return cls(
            version="uncalibrated",
            model_sha256=model_sha256,
            temperature=1.0,
            bias=0.0,
            threshold=float(threshold),
            logit_threshold=math.log(t / (1.0 - t)),
            target_sensitivity=float("nan"),
            confidence=float("nan"),
            method="none",
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.interval is None:
            del data["interval"]
        data["schema"] = SCHEMA
        data["disclaimer"] = DISCLAIMER
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        if data.get("schema") != SCHEMA:
            raise ContractError(f"unsupported calibration schema {data.get('schema')!r}")
        try:
            cal = cls(
                version=str(data["version"]),
                model_sha256=str(data["model_sha256"]),
                temperature=float(data["temperature"]),
                bias=float(data.get("bias", 0.0)),
                threshold=float(data["threshold"]),
                logit_threshold=float(data["logit_threshold"]),
                target_sensitivity=float(data["target_sensitivity"]),
                confidence=float(data["confidence"]),
                method=str(data.get("method", "temperature+bias")),
                fitted_on=dict(data.get("fitted_on", {})),
                created_at=str(data.get("created_at", "")),
                interval=ScoreInterval.from_json(data["interval"])
                if data.get("interval")
                else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed calibration record: {exc}") from exc
        if not cal.temperature > 0:
            raise ContractError("calibration temperature must be positive")
        return cal

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def load_calibration(path: Path | None = None, model_sha256: str | None = None) -> Calibration:
    """Load a calibration record (default: the shipped one).

    ``model_sha256`` defaults to the shipped model's sha256; a record fitted for a different
    model raises :class:`CalibrationMismatchError`.
    """
    if path is None:
        path = WEIGHTS_DIR / "calibration.json"
    if model_sha256 is None:
        model_sha256 = read_contract(WEIGHTS_DIR).sha256
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read calibration {path}: {exc}") from exc
    cal = Calibration.from_json(data)
    if cal.model_sha256 != model_sha256:
        raise CalibrationMismatchError(
            f"calibration {cal.version} is for model {cal.model_sha256[:12]}, "
            f"not {model_sha256[:12]}"
        )
    return cal
