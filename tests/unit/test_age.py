"""Age from the DICOM header: every AS unit, archive quirks, birth dates, garbage."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.dataset import Dataset

from cxr_imaging.age import (
    DAYS_PER_YEAR,
    AgeSource,
    derive_age,
    format_age,
    parse_age_string,
    years_between,
)

# Headers with invalid dates and ages on purpose: pydicom warns when it reads them (the code under
# test never raises for them).
INVALID_VALUES = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")


@pytest.mark.parametrize(
    ("value", "years", "label"),
    [
        ("059Y", 59.0, "59 y"),
        ("006M", 0.5, "6 mo"),
        ("003W", 21 / DAYS_PER_YEAR, "3 wk"),
        ("010D", 10 / DAYS_PER_YEAR, "10 d"),
        ("000Y", 0.0, "0 y"),
        ("012M", 1.0, "12 mo"),
    ],
)
def test_conformant_age_strings(value: str, years: float, label: str) -> None:
    age = parse_age_string(value)
    assert age.years == pytest.approx(years)
    assert age.source is AgeSource.PATIENT_AGE
    assert age.note is None
    assert age.label == label


@pytest.mark.parametrize(
    ("value", "years", "read_as"),
    [("59", 59.0, "years"), ("6", 6.0, "years"), ("59Y", 59.0, "years"), ("6 m", 0.5, "months")],
)
def test_non_conformant_archive_values_are_read_and_noted(
    value: str, years: float, read_as: str
) -> None:
    age = parse_age_string(value)
    assert age.years == pytest.approx(years)
    assert age.source is AgeSource.PATIENT_AGE
    assert age.note is not None
    assert "not DICOM AS" in age.note
    assert age.note.endswith(f"read as {read_as}")


@pytest.mark.parametrize(
    "value",
    ["abc", "059X", "-05Y", "5.5", "12345", "Y", "0059Y", "999Y", "1000", "\x00\x01", b"\xff\xfe"],
)
def test_garbage_age_strings_are_unknown_with_a_note(value: object) -> None:
    age = parse_age_string(value)
    assert age.years is None
    assert age.source is AgeSource.UNKNOWN
    assert age.note


def test_garbage_note_does_not_echo_the_value() -> None:
    assert "Smith" not in (parse_age_string("Smith^John").note or "")


def _ds(**kw: object) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_patient_age_wins_over_dates() -> None:
    age = derive_age(_ds(PatientAge="003Y", PatientBirthDate="19500101", StudyDate="20200101"))
    assert age.years == 3.0
    assert age.source is AgeSource.PATIENT_AGE


def test_birth_date_and_study_date() -> None:
    age = derive_age(_ds(PatientBirthDate="20180615", StudyDate="20210615"))
    assert age.years == pytest.approx(3.0)
    assert age.source is AgeSource.BIRTH_DATE
    assert age.note == "from PatientBirthDate and StudyDate"
    day_before = derive_age(_ds(PatientBirthDate="20180615", StudyDate="20210614"))
    assert day_before.years is not None
    assert 2.99 < day_before.years < 3.0
    assert day_before.label == "2 y"


def test_falls_back_to_acquisition_then_series_date() -> None:
    acq = derive_age(_ds(PatientBirthDate="20000101", AcquisitionDate="20100101"))
    assert acq.years == pytest.approx(10.0)
    assert acq.note == "from PatientBirthDate and AcquisitionDate"
    series = derive_age(_ds(PatientBirthDate="20000101", StudyDate="", SeriesDate="20050101"))
    assert series.years == pytest.approx(5.0)
    assert series.note == "from PatientBirthDate and SeriesDate"


def test_mapping_of_header_fields_works_like_a_dataset() -> None:
    age = derive_age({"PatientBirthDate": "20200101", "StudyDate": "20220701"})
    assert age.years == pytest.approx(2.5, abs=0.01)
    assert derive_age({"PatientAge": "040Y"}).years == 40.0
    assert derive_age({}).years is None


@INVALID_VALUES
def test_garbage_patient_age_falls_back_to_dates_and_says_so() -> None:
    age = derive_age(_ds(PatientAge="XYZ", PatientBirthDate="20200101", StudyDate="20230101"))
    assert age.years == pytest.approx(3.0)
    assert age.source is AgeSource.BIRTH_DATE
    assert age.note is not None
    assert age.note.startswith("PatientAge is not an age")


@INVALID_VALUES
@pytest.mark.parametrize(
    ("fields", "note"),
    [
        ({}, "PatientAge and PatientBirthDate absent"),
        ({"PatientAge": ""}, "PatientAge and PatientBirthDate absent"),
        ({"PatientBirthDate": "20200101"}, "without a valid StudyDate"),
        ({"PatientBirthDate": "2020-13-45", "StudyDate": "20230101"}, "not a valid date"),
        ({"PatientBirthDate": "20200230", "StudyDate": "20230101"}, "not a valid date"),
        ({"PatientBirthDate": "20250101", "StudyDate": "20230101"}, "after StudyDate"),
        ({"PatientBirthDate": "18800101", "StudyDate": "20230101"}, "implausible"),
        ({"PatientBirthDate": "20200101", "StudyDate": "garbage"}, "without a valid StudyDate"),
    ],
)
def test_unknown_age_has_a_note_and_no_dates_in_it(fields: dict[str, str], note: str) -> None:
    age = derive_age(_ds(**fields))
    assert age.years is None
    assert age.source is AgeSource.UNKNOWN
    assert age.note is not None
    assert note in age.note
    assert "2020" not in age.note
    assert "2025" not in age.note


def test_rsna_placeholder_study_date_before_birth_is_unknown() -> None:
    # RSNA anonymisation sets StudyDate 19010101: a birth date after it is garbage, not an age
    age = derive_age(_ds(PatientBirthDate="19600101", StudyDate="19010101"))
    assert age.years is None


def test_feb_29_birthday() -> None:
    born = date(2020, 2, 29)
    assert years_between(born, date(2021, 2, 28)) < 1.0
    assert years_between(born, date(2021, 3, 1)) == pytest.approx(1.0)
    assert years_between(born, date(2024, 2, 29)) == pytest.approx(4.0)
    assert years_between(born, date(2024, 2, 28)) < 4.0
    age = derive_age(_ds(PatientBirthDate="20200229", StudyDate="20260301"))
    assert age.years == pytest.approx(6.0)


def test_same_day_is_zero_and_a_newborn() -> None:
    age = derive_age(_ds(PatientBirthDate="20240101", StudyDate="20240101"))
    assert age.years == 0.0
    assert age.label == "0 d"


def test_real_archive_samples() -> None:
    from pathlib import Path

    import pydicom

    samples = Path(__file__).resolve().parents[2] / "cxr_triage" / "samples"
    rsna = derive_age(pydicom.dcmread(samples / "rsna-opacity-1.dcm", stop_before_pixels=True))
    assert rsna.years == 6.0  # RSNA's bare '6'
    assert rsna.note is not None
    rg1 = pydicom.dcmread(samples / "rg1-j2k-monochrome1-16bit.dcm", stop_before_pixels=True)
    assert derive_age(rg1).source is AgeSource.BIRTH_DATE
    assert derive_age(rg1).label == "64 y"


@pytest.mark.parametrize(
    ("years", "text"),
    [(None, "unknown"), (float("nan"), "unknown"), (0.01, "4 d"), (0.5, "6 mo"), (1.5, "18 mo")]
    + [(2.0, "2 y"), (5.99, "5 y"), (60.4, "60 y")],
)
def test_format_age(years: float | None, text: str) -> None:
    assert format_age(years) == text
