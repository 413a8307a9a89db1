"""Widening the population by validated strata, the enable check on a validation record,
the drift PSI, and how the pages show shadow scores and drift (no services needed)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from cxr_common.drift import (
    DriftReference,
    bin_counts,
    make_reference,
    psi,
)
from cxr_common.population import PopulationStatus, Stratum, Targets, age_band
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.registry.store import ModelEntry, RegistryError
from cxr_db.registry.tables import ModelState
from cxr_db.worklist.reads import ReadView, WorklistEntry
from cxr_imaging.age import Age, AgeSource
from cxr_model.population import PopulationFields, assess_population, load_population
from cxr_triage.models_cli import stratum_evidence
from cxr_triage.worklist_view import as_json, as_table
from worklist import pages

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SHA = "a" * 64
CAL = "cal-1"


def _fields(years: float | None, view: str = "PA", modality: str = "CR") -> PopulationFields:
    age = Age(years, AgeSource.PATIENT_AGE if years is not None else AgeSource.UNKNOWN)
    return PopulationFields(age=age, view=view, modality=modality)


def test_an_enabled_age_band_widens_only_that_band() -> None:
    base = load_population()
    assert base is not None
    wider = base.widened([Stratum.parse("age_band=18-64"), Stratum.parse("view=ll")])
    assert wider.enabled_strata == ("age_band=18-64", "view=LL")
    assert wider.age_label == "1–5 y, 18–64 y"
    for years, expected in [
        (3, "in_scope"),
        (6, "outside"),
        (17.9, "outside"),
        (18, "in_scope"),
        (64.99, "in_scope"),
        (65, "outside"),
    ]:
        assert assess_population(_fields(years), wider).population.value == expected, years
    assert assess_population(_fields(30, view="LL"), wider).triage
    assert not assess_population(_fields(30, view="LL"), base).triage  # the base is unchanged
    over_65 = base.widened([Stratum.parse("age_band=65+")])
    assert over_65.age_label == "1–5 y, 65+ y"
    assert assess_population(_fields(101), over_65).population is PopulationStatus.IN_SCOPE


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sex=F", "does not define the validated population"),
        ("manufacturer=ACME", "does not define"),
        ("population=outside", "does not define"),
        ("age_band=unknown", "'unknown' is not a population"),
        ("age_band=40-50", "age bands are <1, 1-5, 6-17, 18-64, 65+"),
        ("age_band", "not DIMENSION=VALUE"),
    ],
)
def test_a_stratum_that_cannot_widen_the_population_is_refused(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="stratum") as err:
        Stratum.parse(text)
    assert needle in str(err.value)


def test_age_bands_are_completed_years() -> None:
    assert [age_band(y) for y in (0.5, 1, 5.99, 6, 17.99, 18, 64.99, 65, None)] == [
        "<1",
        "1-5",
        "1-5",
        "6-17",
        "6-17",
        "18-64",
        "18-64",
        "65+",
        "unknown",
    ]


def _active(sha: str = SHA, cal: str = CAL) -> ModelEntry:
    return ModelEntry(
        version="v1",
        name="m",
        sha256=sha,
        uri="/m",
        calibration_uri="/m/c.json",
        calibration_version=cal,
        state=ModelState.ACTIVE,
        registered_at=NOW,
        registered_by="t",
        activated_at=NOW,
        changed_at=NOW,
        reference=None,
    )


def _record(positives: int, tp: int, key: str = "age_band=18-64", **over: Any) -> dict[str, Any]:
    from training.validate import clopper_pearson

    lo, hi = clopper_pearson(tp, positives)
    dim, _, value = key.partition("=")
    record: dict[str, Any] = {
        "schema": "cxr-triage/validation/1",
        "model": {"sha256": SHA},
        "calibration": {"version": CAL},
        "targets": {"confidence": 0.95},
        "data": {"hash": "d" * 64},
        "strata": [
            {
                "dimension": dim,
                "value": value,
                "key": key,
                "positives": positives,
                "sensitivity_ci": [lo, hi],
                "specificity_ci": [0.8, 0.9],
            },
        ],
    }
    record.update(over)
    return record


def test_a_passing_stratum_gives_its_evidence() -> None:
    evidence = stratum_evidence(
        _record(120, 120), "f" * 64, Stratum.parse("age_band=18-64"), _active(), Targets()
    )
    assert evidence.positives == 120
    assert evidence.sensitivity_lower == pytest.approx(0.025 ** (1 / 120))
    assert evidence.sensitivity_lower >= 0.95
    assert (evidence.model_sha256, evidence.calibration_version) == (SHA, CAL)


@pytest.mark.parametrize(
    ("record", "active", "needle"),
    [
        (_record(40, 40), _active(), "40 positives, fewer than the 50 required"),
        (_record(120, 110), _active(), "sensitivity lower bound 0.8"),
        (_record(120, 120), _active(sha="b" * 64), "not the active model"),
        (_record(120, 120), _active(cal="cal-2"), "not the active model's cal-2"),
        (_record(120, 120, key="age_band=6-17"), _active(), "has no stratum age_band=18-64"),
        (_record(120, 120, schema="other"), _active(), "not a validation record"),
        (_record(120, 120, targets={"confidence": 0.8}), _active(), "narrower than the 95%"),
    ],
)
def test_a_stratum_that_does_not_pass_is_refused_with_the_reason(
    record: dict[str, Any], active: ModelEntry, needle: str
) -> None:
    with pytest.raises(RegistryError) as err:
        stratum_evidence(record, "f" * 64, Stratum.parse("age_band=18-64"), active, Targets())
    assert needle in str(err.value)


def test_psi_matches_its_definition_and_is_zero_for_the_same_mix() -> None:
    e, a = [0.25, 0.25, 0.5], [0.5, 0.25, 0.25]
    expected = (0.5 - 0.25) * math.log(2) + 0 + (0.25 - 0.5) * math.log(0.5)
    assert psi(e, a) == pytest.approx(expected)
    assert psi(e, e) == 0.0
    assert psi([1.0, 0.0], [0.0, 1.0]) > 10  # an empty bin counts as rare, not impossible
    assert bin_counts([0.0, 0.1, 0.2, 0.5, 0.9], [0.1, 0.5]) == [1, 2, 2]


def test_a_reference_round_trips_and_scores_a_shifted_day_high() -> None:
    scores = [i / 100 for i in range(100)]
    ref_json = make_reference(
        scores,
        eligibility={"scored": 100},
        population={"in_scope": 100},
        model_sha256=SHA,
        calibration_version=CAL,
        source="test",
    )
    ref = DriftReference.from_json(ref_json)
    assert len(ref.score_edges) == 9
    assert ref.score_proportions == pytest.approx([0.1] * 10)
    same = bin_counts(scores, ref.score_edges)
    assert ref.score_psi(same) == pytest.approx(0.0)
    low = bin_counts([0.001] * 50, ref.score_edges)
    assert ref.score_psi(low) > 0.2
    assert ref.eligibility_psi({"scored": 90, "not_eligible": 10}) > 0.2
    assert ref.population_psi({"in_scope": 100}) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not a drift reference"):
        DriftReference.from_json({"schema": "x"})


def _entry(**kw: object) -> WorklistEntry:
    base: dict[str, object] = {
        "study_instance_uid": "1.2.3.4",
        "accession_number": "ACC-9",
        "status": InstanceStatus.DONE,
        "reasons": (),
        "score": None,
        "flagged": False,
        "model_version": "v1",
        "received_at": NOW,
        "scored_at": NOW,
        "instances": 1,
        "heatmap_sop_instance_uids": (),
        "population": "outside",
        "population_reason": "age 54 y; model validated for 1–5 y: read normally",
        "shadow_score": 0.3854,
    }
    base.update(kw)
    return WorklistEntry(**base)  # type: ignore[arg-type]


def _page(entries: list[WorklistEntry], banner: str = "") -> str:
    view = pages.WorklistView(view=ReadView.ALL, entries=entries, now=NOW, banner=banner)
    return pages.worklist_page(view)


def test_a_shadow_score_is_greyed_with_its_reason_everywhere() -> None:
    entry = _entry()
    page = _page([entry])
    assert '<span class="shadow"' in page
    assert "(0.385)" in page
    assert "OUTSIDE the validated population: age 54 y; model validated for 1–5 y" in page
    assert "LIKELY POSITIVE" not in page
    (obj,) = json.loads(as_json([entry]))
    assert obj["population"] == "outside"
    assert obj["shadow_score"] == pytest.approx(0.3854)
    assert obj["score"] is None
    table = as_table([entry])
    assert "(0.385)" in table
    assert "does not triage" in table
    in_scope = _page([_entry(population="in_scope", score=0.2, shadow_score=None)])
    assert "validated population" not in in_scope  # no noise for in-scope studies


def test_the_drift_banner_names_what_drifted_and_is_absent_otherwise() -> None:
    assert pages.drift_banner([], 0.2) == ""
    banner = pages.drift_banner(["score", "population"], 0.2)
    assert "score, population" in banner
    assert "PSI ≥ 0.2" in banner
    assert banner in _page([_entry()], banner)
    assert "Drift warning" not in _page([_entry()])
