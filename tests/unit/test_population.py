"""The validated population in model.json and the population check (policy matrix)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_common.population import (
    PopulationPolicy,
    PopulationStatus,
    UnknownAge,
    study_population,
)
from cxr_imaging.age import Age, AgeSource
from cxr_model import WEIGHTS_DIR, ContractError, load_model, read_contract, sha256_file
from cxr_model.contract import write_contract
from cxr_model.population import (
    Population,
    PopulationFields,
    assess_population,
    load_population,
    population_of,
)

# Headers with invalid dates and ages on purpose: pydicom warns when it reads them (the code under
# test never raises for them).
INVALID_VALUES = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_triage" / "samples"
SHADOW = "read normally, this score does not triage"


@pytest.fixture(scope="module")
def population() -> Population:
    pop = load_population()
    assert pop is not None
    return pop


def test_shipped_contract_declares_the_card_population(population: Population) -> None:
    assert (population.age_min_years, population.age_max_years) == (1.0, 5.0)
    assert population.views == {"PA", "AP"}
    assert population.modalities == {"CR", "DX"}
    assert "Kermany" in population.description
    card = json.loads((WEIGHTS_DIR / "card.json").read_text())["metrics"]["site_check"]
    (evidence,) = population.evidence
    assert evidence.filter == card["filter"]
    assert evidence.n == card["n"] == evidence.n_pos + evidence.n_neg
    assert evidence.auc == card["auc"]
    assert evidence.sensitivity == card["sensitivity"]
    assert evidence.specificity == card["specificity"]
    assert evidence.threshold == card["threshold"]


def test_population_block_leaves_the_weights_sha256_check_intact(tmp_path: Path) -> None:
    contract = read_contract(WEIGHTS_DIR)
    assert sha256_file(WEIGHTS_DIR / contract.weights_file) == contract.sha256
    # the block survives a write/read round trip, and the copied model still loads
    write_contract(contract, tmp_path)
    (tmp_path / "weights.pt").write_bytes((WEIGHTS_DIR / "weights.pt").read_bytes())
    assert load_population(tmp_path) == load_population()
    assert load_model(tmp_path, device="cpu").contract.population == contract.population


def test_a_model_without_a_population_block(tmp_path: Path) -> None:
    data = json.loads((WEIGHTS_DIR / "model.json").read_text())
    del data["population"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    contract = read_contract(tmp_path)
    assert population_of(contract) is None
    assert "population" not in contract.to_json()  # exports stay as they were


@pytest.mark.parametrize(
    "change",
    [
        {"schema": "other/1"},
        {"age_years": {"min": 5, "max": 1}},
        {"age_years": {"min": "x", "max": 5}},
        {"views": []},
        {"modalities": None},
    ],
)
def test_malformed_population_is_refused(change: dict[str, object]) -> None:
    block = dict(read_contract(WEIGHTS_DIR).population) | change
    with pytest.raises(ContractError):
        Population.from_json(block)


def _ds(age: str | None = "003Y", view: str | None = "PA", modality: str | None = "CR") -> Dataset:
    ds = Dataset()
    if age is not None:
        ds.PatientAge = age
    if view is not None:
        ds.ViewPosition = view
    if modality is not None:
        ds.Modality = modality
    return ds


AGES = {"in": "003Y", "out": "060Y", "unknown": None}
VIEWS = {"in": "AP", "out": "LL", "absent": None}
MODALITIES = {"in": "DX", "out": "OT", "absent": None}


@pytest.mark.parametrize("policy", list(PopulationPolicy))
@pytest.mark.parametrize("unknown_age", list(UnknownAge))
@pytest.mark.parametrize("age", list(AGES))
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("modality", list(MODALITIES))
def test_policy_matrix(
    population: Population,
    policy: PopulationPolicy,
    unknown_age: UnknownAge,
    age: str,
    view: str,
    modality: str,
) -> None:
    ds = _ds(AGES[age], VIEWS[view], MODALITIES[modality])
    a = assess_population(ds, population, policy, unknown_age)
    outside = "out" in (age, view, modality)
    if outside:
        expected = PopulationStatus.OUTSIDE
    elif age == "unknown":
        expected = PopulationStatus.UNKNOWN
    else:
        expected = PopulationStatus.IN_SCOPE
    assert a.population is expected
    if policy is PopulationPolicy.OFF:
        triage = True
    elif expected is PopulationStatus.UNKNOWN:
        triage = unknown_age is UnknownAge.IN_SCOPE
    else:
        triage = expected is PopulationStatus.IN_SCOPE
    assert a.triage is triage
    assert (SHADOW in a.reason) is (not triage)
    assert ("CXR_POPULATION_POLICY=off" in a.reason) is (policy is PopulationPolicy.OFF)
    # each explicit mismatch is named with what the model was validated for
    assert ("age 60 y" in a.reason) is (age == "out")
    assert ("view LL" in a.reason) is (view == "out")
    assert ("modality OT" in a.reason) is (modality == "out")
    if age == "out":
        assert "1–5 y" in a.reason
    if view == "out":
        assert "views PA/AP" in a.reason
    if modality == "out":
        assert "modalities CR/DX" in a.reason
    if expected is PopulationStatus.UNKNOWN:
        assert a.reason.startswith("age unknown")
        assert f"CXR_UNKNOWN_AGE={unknown_age.value}" in a.reason or policy is PopulationPolicy.OFF


def test_the_issue_example_reason(population: Population) -> None:
    a = assess_population(_ds("060Y"), population)
    assert a.population is PopulationStatus.OUTSIDE
    assert a.triage is False
    assert a.reason == f"age 60 y; model validated for 1–5 y: {SHADOW}"
    assert SHADOW == "read normally, this score does not triage"
    assert a.age_years == 60.0
    assert a.age_source is AgeSource.PATIENT_AGE


@pytest.mark.parametrize(
    ("age", "status"),
    [
        ("011M", PopulationStatus.OUTSIDE),
        ("012M", PopulationStatus.IN_SCOPE),
        ("001Y", PopulationStatus.IN_SCOPE),
        ("005Y", PopulationStatus.IN_SCOPE),
        ("071M", PopulationStatus.IN_SCOPE),  # 5 y 11 mo is still five
        ("072M", PopulationStatus.OUTSIDE),
        ("006Y", PopulationStatus.OUTSIDE),
        ("010D", PopulationStatus.OUTSIDE),
    ],
)
def test_age_range_edges(population: Population, age: str, status: PopulationStatus) -> None:
    assert assess_population(_ds(age), population).population is status


def test_birth_date_age_is_used(population: Population) -> None:
    ds = _ds(age=None)
    ds.PatientBirthDate = "20200601"
    ds.StudyDate = "20230115"
    a = assess_population(ds, population)
    assert a.population is PopulationStatus.IN_SCOPE
    assert a.reason.startswith("age 2 y; within the validated population (1–5 y)")
    assert "2020" not in a.reason


@INVALID_VALUES
def test_reasons_carry_no_patient_data(population: Population) -> None:
    ds = _ds(age="XYZ")
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN123"
    ds.PatientBirthDate = "19990101"
    ds.StudyDate = "19010101"
    a = assess_population(ds, population)
    assert a.population is PopulationStatus.UNKNOWN
    for secret in ("Doe", "Jane", "MRN123", "1999", "XYZ"):
        assert secret not in a.reason


@INVALID_VALUES
def test_view_and_modality_are_shown_only_as_defined_terms(population: Population) -> None:
    """A View Position or Modality holding free text (a name typed at the console) is
    never echoed into the reason (issue 20): it reads "(non-standard value)"."""
    a = assess_population(_ds(view="DOE JANE", modality="MRN 123"), population)
    assert a.population is PopulationStatus.OUTSIDE
    assert "view (non-standard value)" in a.reason
    assert "modality (non-standard value)" in a.reason
    for secret in ("DOE", "JANE", "MRN", "123"):
        assert secret not in a.reason
    coded = assess_population(_ds(view="LL", modality="OT"), population)
    assert "view LL" in coded.reason
    assert "modality OT" in coded.reason


def test_fields_and_mappings_give_the_same_answer(population: Population) -> None:
    from_map = assess_population({"PatientAge": "004Y", "ViewPosition": "PA"}, population)
    from_fields = assess_population(
        PopulationFields(Age(4.0, AgeSource.RECORDED), "PA", None), population
    )
    assert from_map.population is from_fields.population is PopulationStatus.IN_SCOPE
    assert assess_population({}, population).population is PopulationStatus.UNKNOWN


def test_no_declared_population_is_unknown() -> None:
    a = assess_population(_ds("003Y"), None, unknown_age=UnknownAge.OUTSIDE)
    assert a.population is PopulationStatus.UNKNOWN
    assert a.triage is False
    assert "no validated population" in a.reason


def test_string_policy_values_and_bad_ones(population: Population) -> None:
    assert assess_population(_ds("060Y"), population, "off").triage is True
    with pytest.raises(ValueError, match="enforced"):
        assess_population(_ds(), population, "enforced")


def test_shared_samples(population: Population) -> None:
    """The RSNA positive of the card is a 6-year-old (bare '6'): outside, not triaging."""
    got = {}
    for name in ("rsna-opacity-1", "rsna-normal-1", "nih-nofinding-1", "derived/kermany-normal-1"):
        ds = pydicom.dcmread(SAMPLES / f"{name}.dcm", stop_before_pixels=True)
        got[name] = assess_population(ds, population)
    assert got["rsna-opacity-1"].population is PopulationStatus.OUTSIDE
    assert got["rsna-opacity-1"].reason.startswith("age 6 y; model validated for 1–5 y")
    assert got["rsna-normal-1"].population is PopulationStatus.OUTSIDE
    assert got["nih-nofinding-1"].population is PopulationStatus.OUTSIDE
    assert got["derived/kermany-normal-1"].population is PopulationStatus.UNKNOWN
    assert got["derived/kermany-normal-1"].triage is True
    assert all(not re.search(r"\d{8}", a.reason) for a in got.values())


@pytest.mark.parametrize(
    ("statuses", "study"),
    [
        ([], None),
        (["outside", "in_scope"], PopulationStatus.IN_SCOPE),
        (["outside", "unknown"], PopulationStatus.UNKNOWN),
        ([PopulationStatus.OUTSIDE], PopulationStatus.OUTSIDE),
    ],
)
def test_study_population(statuses: list[str], study: PopulationStatus | None) -> None:
    assert study_population(statuses) is study
