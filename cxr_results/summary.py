"""What the model said about a study, as the result objects need it (no patient data)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cxr_common.model_files import ModelFinding

__all__ = [
    "NOT_USED_FOR_TRIAGE",
    "OUTSIDE_POPULATION",
    "AnalysisStatus",
    "ResultSummary",
    "population_statement",
]

#: What the SC and the SR say when the score was made in shadow (``triage`` False).
OUTSIDE_POPULATION = "OUTSIDE VALIDATED POPULATION"
UNKNOWN_POPULATION = "POPULATION UNKNOWN"
NOT_USED_FOR_TRIAGE = "score not used for triage"


class AnalysisStatus(StrEnum):
    """Whether a study was analysed (the Analysis status code of the SR)."""

    SCORED = "scored"
    NOT_ELIGIBLE = "not_eligible"
    FAILED = "failed"


@dataclass(frozen=True)
class ResultSummary:
    """What the model said about a study (no patient data), for the SC and the SR.

    ``score`` and ``threshold`` are calibrated probabilities in [0, 1]; ``flagged`` is
    ``score >= threshold`` as the worker decided it; ``finding`` is what the model reports
    (from its ``model.json``; the caller reads it, this package never loads a model).

    ``population`` and ``population_reason`` are the scored instance's intended-population
    check (``instances.population``: ``in_scope``, ``outside`` or ``unknown``; the reason
    names ages and views, never the patient). ``triage`` False means the score was made in
    shadow (the instance is outside the validated population under ``enforce``): it set no
    priority, so the objects say so and never present ``flagged`` as a triage result."""

    score: float
    threshold: float
    flagged: bool
    model_name: str
    model_version: str
    weights_sha256: str
    calibration_version: str
    finding: ModelFinding
    status: AnalysisStatus = AnalysisStatus.SCORED
    reason: str | None = None
    population_note: str | None = None
    population: str | None = None
    population_reason: str | None = None
    triage: bool = True
    score_interval: tuple[float, float] | None = None
    """``(lower, upper)`` of the score's interval from the site calibration sample (95%;
    None: the calibration has none)."""


def population_statement(result: ResultSummary) -> str | None:
    """``"OUTSIDE VALIDATED POPULATION: score not used for triage (age 60 y; ...)"`` for a
    shadow score; None for a score that triaged."""
    if result.triage:
        return None
    label = UNKNOWN_POPULATION if result.population == "unknown" else OUTSIDE_POPULATION
    reason = (result.population_reason or "").strip()
    return f"{label}: {NOT_USED_FOR_TRIAGE}" + (f" ({reason})" if reason else "")
