"""The intended-population vocabulary shared by the worker, the database and the worklist.

A scored instance (and its study) is ``in_scope`` of the population the model was validated
on, ``outside`` it (with a staff-readable reason), or ``unknown`` (the age could not be
derived from the header). What that means for triage is a site policy:

* ``CXR_POPULATION_POLICY`` (:class:`PopulationPolicy`): ``enforce`` (default) scores
  outside-population instances in **shadow**: the score is stored and shown, greyed, with the
  reason, but it never sets or lowers priority; ``off`` turns the check off for a site that
  has validated the model on its whole population (``cxr-triage validate``).
* ``CXR_UNKNOWN_AGE`` (:class:`UnknownAge`): what an instance of unknown age is treated as
  under ``enforce``: ``in_scope`` (default: it triages) or ``outside`` (shadow). Its
  population stays ``unknown`` either way, so the worklist says so.

Two checks decide: the **header** (age, view, modality against the population block) and the
**image** (``cxr_model.distribution``: the model's own pooled features against its training
distribution, and an inversion detector on the same features). An image over either
threshold is ``outside`` whatever the header says, with :data:`IMAGE_REASON` (and
:data:`INVERTED_REASON` with :data:`INVERTED_ACTION` when it looks greyscale-inverted);
:class:`PopulationCheck` records which check decided.

The rules themselves live in ``cxr_model.population``; this module holds only the words, so
that the web worklist (which may not import the model) can use them too.

A site widens the population one **stratum** at a time (``cxr-triage population enable
age_band=18-64 --validation validation.json``) once its own validation shows the stratum meets
:class:`Targets`; :data:`WIDENING_DIMENSIONS` are the dimensions a stratum may widen (the ones
the check looks at), :data:`AGE_BANDS` the age strata ``validate`` reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "AGE_BANDS",
    "IMAGE_REASON",
    "INVERTED_ACTION",
    "INVERTED_REASON",
    "POPULATION_POLICY_ENV",
    "UNKNOWN_AGE_ENV",
    "WIDENING_DIMENSIONS",
    "PopulationCheck",
    "PopulationPolicy",
    "PopulationStatus",
    "Stratum",
    "Targets",
    "UnknownAge",
    "age_band",
    "age_band_range",
    "study_population",
]

#: Environment variables (read by the process settings, never at import time).
POPULATION_POLICY_ENV = "CXR_POPULATION_POLICY"
UNKNOWN_AGE_ENV = "CXR_UNKNOWN_AGE"


class PopulationStatus(StrEnum):
    """Is an instance within the population the model was validated on?"""

    IN_SCOPE = "in_scope"
    OUTSIDE = "outside"
    UNKNOWN = "unknown"


class PopulationCheck(StrEnum):
    """Which check decided an instance's population.

    For ``outside``: the check(s) that found it outside. For ``in_scope`` and ``unknown``:
    ``header`` when only the header was checked (the model ships no distribution check),
    ``both`` when the image was checked too and lies within the training distribution."""

    HEADER = "header"
    IMAGE = "image"
    BOTH = "both"


#: The staff-readable reason when the image decides (the start of the population reason).
IMAGE_REASON = "image unlike the validated population"
#: Added to :data:`IMAGE_REASON` when the image's second statistic (an inversion detector on
#: the same features) decided: the film looks greyscale-inverted, the known failure of a
#: MONOCHROME1 image decoded or exported as MONOCHROME2; :data:`INVERTED_ACTION` says what to do.
INVERTED_REASON = "image appears inverted (greyscale)"
INVERTED_ACTION = (
    "check the photometric interpretation (MONOCHROME1/MONOCHROME2) at the modality or "
    "PACS export and resend the image"
)


class PopulationPolicy(StrEnum):
    """``CXR_POPULATION_POLICY``: ``enforce`` (default) or ``off``."""

    ENFORCE = "enforce"
    OFF = "off"


class UnknownAge(StrEnum):
    """``CXR_UNKNOWN_AGE``: how an instance of unknown age is treated under ``enforce``."""

    IN_SCOPE = "in_scope"
    OUTSIDE = "outside"


def study_population(statuses: Iterable[PopulationStatus | str]) -> PopulationStatus | None:
    """A study's population from its scored instances' (``None`` when there are none).

    ``in_scope`` when any instance is in scope (that instance may triage the study), else
    ``unknown`` when any is unknown, else ``outside``.
    """
    seen = {PopulationStatus(s) for s in statuses}
    for status in (PopulationStatus.IN_SCOPE, PopulationStatus.UNKNOWN, PopulationStatus.OUTSIDE):
        if status in seen:
            return status
    return None


UNKNOWN_STRATUM = "unknown"
#: (label, lowest completed year, highest completed year); the shipped model's own band is 1-5.
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("<1", 0, 0),
    ("1-5", 1, 5),
    ("6-17", 6, 17),
    ("18-64", 18, 64),
    ("65+", 65, 10_000),
)
#: Stratum dimensions that widen the population when enabled (what the check looks at).
WIDENING_DIMENSIONS = ("age_band", "view", "modality")


def age_band(years: float | None) -> str:
    """The :data:`AGE_BANDS` label for an age in years (completed years), or ``unknown``."""
    if years is None or not math.isfinite(years) or years < 0:
        return UNKNOWN_STRATUM
    completed = math.floor(years + 1e-9)
    for label, lo, hi in AGE_BANDS:
        if lo <= completed <= hi:
            return label
    return UNKNOWN_STRATUM


def age_band_range(label: str) -> tuple[int, int] | None:
    """(lowest, highest) completed years of an :data:`AGE_BANDS` label, None if unknown."""
    for name, lo, hi in AGE_BANDS:
        if name == label:
            return lo, hi
    return None


@dataclass(frozen=True)
class Stratum:
    """One stratum a site may enable, ``dimension=value`` (``age_band=18-64``, ``view=LL``)."""

    dimension: str
    value: str

    @property
    def key(self) -> str:
        return f"{self.dimension}={self.value}"

    @classmethod
    def parse(cls, text: str) -> Stratum:
        """``age_band=18-64``, ``view=LL`` or ``modality=DX``; ValueError says what is wrong."""
        dimension, sep, value = text.strip().partition("=")
        dimension, value = dimension.strip(), value.strip()
        if not sep or not dimension or not value:
            raise ValueError(f"stratum {text!r} is not DIMENSION=VALUE, e.g. age_band=18-64")
        if dimension not in WIDENING_DIMENSIONS:
            raise ValueError(
                f"stratum {text!r}: {dimension} does not define the validated population; "
                f"a site can widen it by {', '.join(WIDENING_DIMENSIONS)}"
            )
        if value.lower() == UNKNOWN_STRATUM:
            raise ValueError(f"stratum {text!r}: 'unknown' is not a population that can be enabled")
        if dimension == "age_band":
            if age_band_range(value) is None:
                bands = ", ".join(b[0] for b in AGE_BANDS)
                raise ValueError(f"stratum {text!r}: age bands are {bands}")
        else:
            value = value.upper()
        return cls(dimension, value)


@dataclass(frozen=True)
class Targets:
    """What a validated stratum must show (``cxr-triage validate`` and ``population enable``).

    ``sensitivity``: the lower end of the two-sided Clopper-Pearson interval (at
    ``confidence``) must reach it; ``min_positives``: at least this many positives;
    ``specificity`` (optional): the same rule for specificity."""

    sensitivity: float = 0.95
    min_positives: int = 50
    specificity: float | None = None
    confidence: float = 0.95

    @classmethod
    def parse(cls, text: str | None) -> Targets:
        """``"sensitivity=0.95,min_positives=50,specificity=0.8,confidence=0.95"``."""
        values: dict[str, Any] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(
                    f"target {part!r} is not KEY=VALUE with KEY one of "
                    "sensitivity, min_positives, specificity, confidence"
                )
            values[key] = int(value) if key == "min_positives" else float(value)
        targets = cls(**values)
        for name in ("sensitivity", "specificity", "confidence"):
            v = getattr(targets, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"target {name} must be between 0 and 1, not {v}")
        if targets.min_positives < 1:
            raise ValueError("target min_positives must be at least 1")
        return targets
