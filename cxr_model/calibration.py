"""Site calibration record: temperature (+ bias) scaling and an operating threshold.

The record is stored as JSON (``calibration.json`` next to the shipped weights) and is tied to
one model by its weights sha256. Calibrated probability::

    p = sigmoid(logit / temperature + bias)

An eligible image is flagged when ``p >= threshold``: :meth:`Calibration.score` is that one
rule, used by the worker, ``predict`` and ``evaluate``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    """One image's logit read through a calibration record."""

    logit: float
    probability: float
    threshold: float
    flagged: bool


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
        return CalibratedScore(float(logit), probability, self.threshold, flagged)

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
