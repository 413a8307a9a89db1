"""What the model said about a study, as the result objects need it (no patient data)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AnalysisStatus", "ResultSummary"]


class AnalysisStatus(StrEnum):
    """Whether a study was analysed (the Analysis status code of the SR)."""

    SCORED = "scored"
    NOT_ELIGIBLE = "not_eligible"
    FAILED = "failed"


@dataclass(frozen=True)
class ResultSummary:
    """What the model said about a study (no patient data), for the SC and the SR.

    ``score`` and ``threshold`` are calibrated probabilities in [0, 1]; ``flagged`` is
    ``score >= threshold`` as the worker decided it; ``finding`` names what is scored."""

    score: float
    threshold: float
    flagged: bool
    model_name: str
    model_version: str
    weights_sha256: str
    calibration_version: str
    status: AnalysisStatus = AnalysisStatus.SCORED
    reason: str | None = None
    finding: str = "pneumonia"
    population_note: str | None = None
