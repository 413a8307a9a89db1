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

The rules themselves live in ``cxr_model.population``; this module holds only the words, so
that the web worklist (which may not import the model) can use them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "POPULATION_POLICY_ENV",
    "UNKNOWN_AGE_ENV",
    "PopulationPolicy",
    "PopulationStatus",
    "UnknownAge",
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
