"""Drift: how far a day's inputs and scores are from the model's calibration sample.

The measure is the population stability index over matching bins::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the reference proportion (the calibration sample) and ``a_i`` the day's, each
floored at :data:`EPSILON` so that an empty bin counts as rare, not impossible. Usual reading:
below 0.1 stable, 0.1-0.2 a moderate shift, at or above :data:`PSI_WARN` (0.2) a shift worth a
look: the worklist shows a warning.

Three PSIs per day: the calibrated scores of triaging predictions, binned at the reference's
deciles; the eligibility mix of finished instances (``scored``, ``not_eligible``,
``failed``); and the population mix of scored instances (``in_scope``, ``outside``,
``unknown``). A reference (schema :data:`REFERENCE_SCHEMA`) is JSON: bin edges and
proportions for the scores, proportions for each mix, the model sha256 and calibration version
it was taken for, and where it came from (``cxr-triage validate`` writes one per run as
``drift_reference.json``; ``model register --reference FILE`` stores it with the model).

Pure Python; the queries are ``cxr_db.drift``'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ELIGIBILITY_CATEGORIES",
    "EPSILON",
    "POPULATION_CATEGORIES",
    "PSI_WARN",
    "REFERENCE_SCHEMA",
    "DriftReference",
    "bin_counts",
    "make_reference",
    "proportions",
    "psi",
]

REFERENCE_SCHEMA = "cxr-triage/drift-reference/1"
PSI_WARN = 0.2
EPSILON = 1e-4
ELIGIBILITY_CATEGORIES = ("scored", "not_eligible", "failed")
POPULATION_CATEGORIES = ("in_scope", "outside", "unknown")


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (proportions, same bins)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError("psi needs two proportion vectors of the same, non-zero length")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(float(e), eps), max(float(a), eps)
        total += (a - e) * math.log(a / e)
    return total


def proportions(counts: Sequence[int | float]) -> list[float]:
    n = float(sum(counts))
    return [float(c) / n if n else 0.0 for c in counts]


def bin_counts(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts in ``len(edges) + 1`` bins: ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        i = 0
        while i < len(edges) and v >= edges[i]:
            i += 1
        counts[i] += 1
    return counts


def _quantile_edges(values: Sequence[float], n_bins: int) -> list[float]:
    ordered = sorted(float(v) for v in values)
    edges: list[float] = []
    for k in range(1, n_bins):
        q = ordered[min(len(ordered) - 1, int(round(k * len(ordered) / n_bins)))]
        if not edges or q > edges[-1]:
            edges.append(q)
    return edges


def _mix(counts: Mapping[str, int | float], categories: Sequence[str]) -> dict[str, float]:
    shares = proportions([counts.get(c, 0) for c in categories])
    return dict(zip(categories, shares, strict=True))


def make_reference(
    scores: Sequence[float],
    *,
    eligibility: Mapping[str, int | float],
    population: Mapping[str, int | float],
    model_sha256: str,
    calibration_version: str,
    source: str,
    n_bins: int = 10,
) -> dict[str, Any]:
    """A drift reference (JSON) from a sample's calibrated scores and mixes."""
    if not scores:
        raise ValueError("a drift reference needs at least one score")
    edges = _quantile_edges(scores, n_bins)
    return {
        "schema": REFERENCE_SCHEMA,
        "model_sha256": model_sha256,
        "calibration_version": calibration_version,
        "source": source,
        "n": len(scores),
        "score_edges": edges,
        "score_proportions": proportions(bin_counts(scores, edges)),
        "eligibility": _mix(eligibility, ELIGIBILITY_CATEGORIES),
        "population": _mix(population, POPULATION_CATEGORIES),
    }


@dataclass(frozen=True)
class DriftReference:
    """A parsed drift reference."""

    model_sha256: str
    calibration_version: str
    source: str
    n: int
    score_edges: tuple[float, ...]
    score_proportions: tuple[float, ...]
    eligibility: Mapping[str, float] = field(default_factory=dict)
    population: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftReference:
        if data.get("schema") != REFERENCE_SCHEMA:
            raise ValueError(f"not a drift reference (schema {data.get('schema')!r})")
        try:
            ref = cls(
                model_sha256=str(data["model_sha256"]),
                calibration_version=str(data["calibration_version"]),
                source=str(data.get("source", "")),
                n=int(data["n"]),
                score_edges=tuple(float(x) for x in data["score_edges"]),
                score_proportions=tuple(float(x) for x in data["score_proportions"]),
                eligibility={
                    c: float(data["eligibility"].get(c, 0.0)) for c in ELIGIBILITY_CATEGORIES
                },
                population={
                    c: float(data["population"].get(c, 0.0)) for c in POPULATION_CATEGORIES
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed drift reference: {exc}") from exc
        if len(ref.score_proportions) != len(ref.score_edges) + 1:
            raise ValueError("malformed drift reference: one more proportion than edges needed")
        return ref

    def score_psi(self, bin_counts_: Sequence[int]) -> float:
        return psi(self.score_proportions, proportions(bin_counts_))

    def eligibility_psi(self, counts: Mapping[str, int]) -> float:
        return psi(
            [self.eligibility[c] for c in ELIGIBILITY_CATEGORIES],
            proportions([counts.get(c, 0) for c in ELIGIBILITY_CATEGORIES]),
        )

    def population_psi(self, counts: Mapping[str, int]) -> float:
        return psi(
            [self.population[c] for c in POPULATION_CATEGORIES],
            proportions([counts.get(c, 0) for c in POPULATION_CATEGORIES]),
        )
