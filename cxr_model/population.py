"""The population a model was validated on, and whether an instance falls within it.

``model.json`` holds a ``population`` block (schema ``cxr-triage/population/1``)::

    "population": {
      "schema": "cxr-triage/population/1",
      "description": "...",
      "age_years": {"min": 1, "max": 5},     # completed years, both ends included
      "views": ["PA", "AP"],                 # ViewPosition
      "modalities": ["CR", "DX"],            # Modality
      "evidence": [{"name": "site_check", "n": 155, "auc": 0.980, ...}]
    }

:func:`assess_population` checks one instance's header against it: age (from
:func:`cxr_imaging.age.derive_age`), ``ViewPosition`` and ``Modality``. Any explicit value
outside the block makes the instance ``outside``; otherwise an unknown age makes it
``unknown``; an absent ``ViewPosition`` or ``Modality`` does not count against it (chest
films often omit ViewPosition; eligibility has already refused what is not a chest film).
``triage`` says whether the score may set priority; under ``enforce`` an outside instance is
scored in shadow, and an unknown one follows ``CXR_UNKNOWN_AGE``. Reasons are for staff and
name no patient data except the age itself: View Position and Modality appear only as
DICOM defined terms, anything else as "(non-standard value)" (a CS value may hold free
text; reasons reach the worklist, logs and the SR sent to PACS).

The image is checked too when the caller passes its distance from the training distribution
(:class:`cxr_model.distribution.ImageDistance`, from the same forward pass as the score): an
image over the threshold is ``outside`` **whatever the header says** (an adult film without
an age, a rotated, inverted or photographed film, an image without anatomy), with the reason
:data:`~cxr_common.population.IMAGE_REASON` (and, when the inversion detector decided,
:data:`~cxr_common.population.INVERTED_REASON` with what to do). Under
``CXR_POPULATION_POLICY=off`` it still reads ``outside`` with that reason (a warning) while
the score triages.
``PopulationAssessment.check`` says which check decided (header, image, both).

A site widens the population with strata its own validation passed
(:meth:`Population.widened`: an age band adds an age range, a view or modality adds itself);
the worker checks against the widened population (``cxr-triage population show``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cxr_common.population import (
    POPULATION_POLICY_ENV,
    UNKNOWN_AGE_ENV,
    PopulationCheck,
    PopulationPolicy,
    PopulationStatus,
    Stratum,
    UnknownAge,
    age_band_range,
)
from cxr_imaging.age import Age, AgeSource, HeaderSource, derive_age
from cxr_imaging.eligibility import KNOWN_MODALITIES, KNOWN_VIEW_POSITIONS, coded
from cxr_model.contract import WEIGHTS_DIR, ModelContract, read_contract
from cxr_model.distribution import ImageDistance
from cxr_model.errors import ContractError

__all__ = [
    "POPULATION_SCHEMA",
    "Evidence",
    "ImageDistance",
    "Population",
    "PopulationAssessment",
    "PopulationFields",
    "assess_population",
    "load_population",
    "population_of",
]

POPULATION_SCHEMA = "cxr-triage/population/1"
SHADOW = "read normally, this score does not triage"


@dataclass(frozen=True)
class Evidence:
    """One labelled evaluation that supports the population (from the model card)."""

    name: str
    filter: str
    n: int
    n_pos: int
    n_neg: int
    auc: float
    auc_ci95: tuple[float, float]
    threshold: float
    sensitivity: float
    specificity: float
    source: str = ""


@dataclass(frozen=True)
class Population:
    """Ages (completed years, ``age_min_years`` to ``age_max_years`` inclusive), views and
    modalities the model was validated on."""

    description: str
    age_min_years: float
    age_max_years: float
    views: frozenset[str]
    modalities: frozenset[str]
    evidence: tuple[Evidence, ...] = ()
    #: Age ranges (completed years, inclusive) the site enabled on top of the model's own.
    extra_age_ranges: tuple[tuple[float, float], ...] = ()
    #: The strata (``age_band=18-64``) the site enabled, in the order given.
    enabled_strata: tuple[str, ...] = ()

    def age_in_range(self, years: float) -> bool:
        """Completed years within range: 1-5 keeps a child of 5 y 11 mo, not one of 6."""
        ranges = ((self.age_min_years, self.age_max_years), *self.extra_age_ranges)
        return any(lo <= years < hi + 1 for lo, hi in ranges)

    @property
    def age_label(self) -> str:
        ranges = sorted({(self.age_min_years, self.age_max_years), *self.extra_age_ranges})
        return ", ".join(
            f"{_num(lo)}+ y" if hi >= 1000 else f"{_num(lo)}–{_num(hi)} y" for lo, hi in ranges
        )

    def widened(self, strata: Iterable[Stratum]) -> Population:
        """This population plus the ``strata`` a site validated and enabled."""
        ages = list(self.extra_age_ranges)
        views, modalities = set(self.views), set(self.modalities)
        keys = list(self.enabled_strata)
        for stratum in strata:
            if stratum.dimension == "age_band":
                band = age_band_range(stratum.value)
                if band is None:
                    raise ContractError(f"unknown age band {stratum.value!r}")
                ages.append((float(band[0]), float(band[1])))
            elif stratum.dimension == "view":
                views.add(stratum.value.upper())
            elif stratum.dimension == "modality":
                modalities.add(stratum.value.upper())
            else:
                raise ContractError(f"stratum {stratum.key} does not widen a population")
            keys.append(stratum.key)
        return replace(
            self,
            extra_age_ranges=tuple(dict.fromkeys(ages)),
            views=frozenset(views),
            modalities=frozenset(modalities),
            enabled_strata=tuple(dict.fromkeys(keys)),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Population:
        if data.get("schema") != POPULATION_SCHEMA:
            raise ContractError(f"unsupported population schema {data.get('schema')!r}")
        try:
            ages = data["age_years"]
            pop = cls(
                description=str(data.get("description", "")),
                age_min_years=float(ages["min"]),
                age_max_years=float(ages["max"]),
                views=frozenset(str(v).strip().upper() for v in data["views"]),
                modalities=frozenset(str(m).strip().upper() for m in data["modalities"]),
                evidence=tuple(_evidence(e) for e in data.get("evidence", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed population block: {exc}") from exc
        if not 0 <= pop.age_min_years <= pop.age_max_years:
            raise ContractError("population age range must satisfy 0 <= min <= max")
        if not pop.views or not pop.modalities:
            raise ContractError("population must name at least one view and one modality")
        return pop


def _evidence(e: Mapping[str, Any]) -> Evidence:
    lo, hi = e["auc_ci95"]
    return Evidence(
        name=str(e["name"]),
        filter=str(e.get("filter", "")),
        n=int(e["n"]),
        n_pos=int(e["n_pos"]),
        n_neg=int(e["n_neg"]),
        auc=float(e["auc"]),
        auc_ci95=(float(lo), float(hi)),
        threshold=float(e["threshold"]),
        sensitivity=float(e["sensitivity"]),
        specificity=float(e["specificity"]),
        source=str(e.get("source", "")),
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def population_of(contract: ModelContract) -> Population | None:
    """The contract's population, or ``None`` when its ``model.json`` declares none."""
    if not contract.population:
        return None
    return Population.from_json(contract.population)


def load_population(weights_dir: Path | None = None) -> Population | None:
    """The population in ``weights_dir/model.json`` (default: the shipped model)."""
    return population_of(read_contract(weights_dir or WEIGHTS_DIR))


@dataclass(frozen=True)
class PopulationFields:
    """The header facts the check needs, for callers that keep them outside a dataset."""

    age: Age
    view: str | None = None
    modality: str | None = None


def _fields(source: HeaderSource | PopulationFields) -> PopulationFields:
    if isinstance(source, PopulationFields):
        return source
    return PopulationFields(
        age=derive_age(source),
        view=_code(source, "ViewPosition"),
        modality=_code(source, "Modality"),
    )


def _code(header: HeaderSource, keyword: str) -> str | None:
    try:
        value = header.get(keyword)
    except Exception:  # noqa: BLE001 - a broken element counts as absent, never as a crash
        return None
    text = "" if value is None else str(value).strip().upper()
    return text or None


@dataclass(frozen=True)
class PopulationAssessment:
    """The outcome of :func:`assess_population`.

    ``triage`` is False when the score must not set or lower priority (shadow scoring).
    ``check`` says which check decided (:class:`PopulationCheck`); ``image`` is the image's
    distance when it was checked."""

    population: PopulationStatus
    reason: str
    triage: bool
    age_years: float | None = None
    age_source: AgeSource = AgeSource.UNKNOWN
    age_note: str | None = None
    check: PopulationCheck = PopulationCheck.HEADER
    image: ImageDistance | None = None

    @property
    def outside_by_image(self) -> bool:
        return self.check in (PopulationCheck.IMAGE, PopulationCheck.BOTH) and (
            self.population is PopulationStatus.OUTSIDE
        )


def _slash(values: frozenset[str], order: tuple[str, ...]) -> str:
    ranked = sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))
    return "/".join(ranked)


def assess_population(
    source: HeaderSource | PopulationFields,
    population: Population | None,
    policy: PopulationPolicy | str = PopulationPolicy.ENFORCE,
    unknown_age: UnknownAge | str = UnknownAge.IN_SCOPE,
    image: ImageDistance | None = None,
) -> PopulationAssessment:
    """Is this instance within the model's validated population, and may its score triage?

    ``source`` is a dataset (a header read is enough), a mapping of DICOM keywords, or
    :class:`PopulationFields`; ``image`` is the image's distance from the model's training
    distribution (None: the model ships no distribution check). An image over its
    threshold is outside whatever the header says. Pure: reads nothing but its arguments;
    never raises for bad header values.
    """
    policy = PopulationPolicy(policy)
    unknown_age = UnknownAge(unknown_age)
    fields = _fields(source)
    age = fields.age
    image_outside = image is not None and image.outside
    within = PopulationCheck.BOTH if image is not None else PopulationCheck.HEADER

    def result(
        status: PopulationStatus,
        facts: str,
        triage: bool,
        check: PopulationCheck = within,
    ) -> PopulationAssessment:
        if policy is PopulationPolicy.OFF:
            tail = (
                f"population check off at this site ({POPULATION_POLICY_ENV}=off): "
                "the score triages"
            )
            triage = True
        elif triage:
            tail = (
                "the score triages"
                if status is PopulationStatus.IN_SCOPE
                else f"treated as in scope ({UNKNOWN_AGE_ENV}=in_scope), the score triages"
            )
        else:
            tail = SHADOW + (
                f" ({UNKNOWN_AGE_ENV}=outside)" if status is PopulationStatus.UNKNOWN else ""
            )
        return PopulationAssessment(
            population=status,
            reason=f"{facts}: {tail}",
            triage=triage,
            age_years=age.years,
            age_source=age.source,
            age_note=age.note,
            check=check,
            image=image,
        )

    image_facts = image.facts if image is not None and image_outside else ""
    if population is None:
        if image_outside:
            return result(PopulationStatus.OUTSIDE, image_facts, False, PopulationCheck.IMAGE)
        return result(
            PopulationStatus.UNKNOWN,
            "model declares no validated population (no population block in model.json)",
            unknown_age is UnknownAge.IN_SCOPE,
        )

    found: list[str] = []
    validated: list[str] = []
    if age.years is not None and not population.age_in_range(age.years):
        found.append(f"age {age.label}")
        validated.append(population.age_label)
    if fields.view is not None and fields.view not in population.views:
        found.append(f"view {coded(fields.view, KNOWN_VIEW_POSITIONS)}")
        validated.append(f"views {_slash(population.views, ('PA', 'AP'))}")
    if fields.modality is not None and fields.modality not in population.modalities:
        found.append(f"modality {coded(fields.modality, KNOWN_MODALITIES)}")
        validated.append(f"modalities {_slash(population.modalities, ('CR', 'DX'))}")
    if found:
        facts = f"{', '.join(found)}; model validated for {', '.join(validated)}"
        if image_outside:
            facts = f"{image_facts}; {facts}"
        check = PopulationCheck.BOTH if image_outside else PopulationCheck.HEADER
        return result(PopulationStatus.OUTSIDE, facts, False, check)
    if image_outside:
        header = (
            f"age {age.label}"
            if age.years is not None
            else "age unknown" + (f" ({age.note})" if age.note else "")
        )
        facts = f"{image_facts}; header {header}, model validated for {population.age_label}"
        return result(PopulationStatus.OUTSIDE, facts, False, PopulationCheck.IMAGE)
    if age.years is None:
        why = "age unknown" + (f" ({age.note})" if age.note else "")
        facts = f"{why}; model validated for {population.age_label}"
        return result(PopulationStatus.UNKNOWN, facts, unknown_age is UnknownAge.IN_SCOPE)
    facts = f"age {age.label}; within the validated population ({population.age_label})"
    return result(PopulationStatus.IN_SCOPE, facts, True)
