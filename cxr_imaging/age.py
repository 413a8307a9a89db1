"""A patient's age at the time of an instance, from its DICOM header.

Rules, in order:

1. ``PatientAge`` (VR AS): ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY`` (``059Y``, ``006M``,
   ``003W``, ``010D``). Real archives also hold non-conformant values; a bare number
   (RSNA's ``59``) is read as years, and an unpadded one (``59Y``, ``6 M``) by its unit; both
   say so in the note.
2. ``PatientBirthDate`` with the first valid of ``StudyDate``, ``AcquisitionDate``,
   ``SeriesDate``: completed years plus the fraction of the current year of life. A child
   born on 29 February turns a year older on 1 March in other years.
3. Otherwise unknown.

Garbage (unparseable values, a birth date after the study, an age over
:data:`MAX_PLAUSIBLE_YEARS`) gives unknown with a note and never raises. Notes name the
attributes and, for ``PatientAge``, the age itself; never a date or any other patient data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset

__all__ = [
    "DAYS_PER_YEAR",
    "MAX_PLAUSIBLE_YEARS",
    "REFERENCE_DATE_KEYWORDS",
    "Age",
    "AgeSource",
    "HeaderSource",
    "derive_age",
    "format_age",
    "parse_age_string",
    "years_between",
]

#: A dataset, or any mapping of DICOM keywords to values (e.g. header fields kept in a row).
HeaderSource = Dataset | Mapping[str, Any]

DAYS_PER_YEAR = 365.2425
MAX_PLAUSIBLE_YEARS = 130.0
REFERENCE_DATE_KEYWORDS = ("StudyDate", "AcquisitionDate", "SeriesDate")

_UNIT_YEARS = {"D": 1.0 / DAYS_PER_YEAR, "W": 7.0 / DAYS_PER_YEAR, "M": 1.0 / 12.0, "Y": 1.0}
_UNIT_NAMES = {"D": "days", "W": "weeks", "M": "months", "Y": "years"}
_UNIT_LABELS = {"D": "d", "W": "wk", "M": "mo", "Y": "y"}
_AS_CONFORMANT = re.compile(r"(\d{3})([DWMY])")
_AS_LOOSE = re.compile(r"(\d{1,3})\s*([DWMY])")
_BARE_NUMBER = re.compile(r"\d{1,3}")
_AGE_ABSENT = "PatientAge absent"
_BIRTH_ABSENT = "PatientBirthDate absent"
_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")


class AgeSource(StrEnum):
    """Where an :class:`Age` came from."""

    PATIENT_AGE = "PatientAge"
    BIRTH_DATE = "PatientBirthDate"
    RECORDED = "recorded"  # given by the caller, e.g. an age_years column in a labels file
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Age:
    """Age in years (``None`` when unknown), its source and what to know about it."""

    years: float | None
    source: AgeSource
    note: str | None = None
    #: How the header put it (``6 mo`` for ``006M``), when that is plainer than ``years``.
    as_written: str | None = None

    @property
    def known(self) -> bool:
        return self.years is not None

    @property
    def label(self) -> str:
        """Staff-readable: ``60 y``, ``6 mo``, ``3 wk``, ``10 d`` or ``unknown``."""
        if self.years is None:
            return "unknown"
        return self.as_written or format_age(self.years)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip().upper()


def _get(header: HeaderSource, keyword: str) -> Any:
    try:
        return header.get(keyword)
    except Exception:  # noqa: BLE001 - a broken element in a received file is garbage, not a crash
        return None


def parse_age_string(value: Any) -> Age:
    """Read one ``PatientAge`` value (rule 1); unknown with a note when it is not an age."""
    text = _plain(value)
    if not text:
        return Age(None, AgeSource.UNKNOWN, _AGE_ABSENT)
    if m := _AS_CONFORMANT.fullmatch(text):
        count, unit = int(m.group(1)), m.group(2)
        note = None
    elif m := _AS_LOOSE.fullmatch(text):
        count, unit = int(m.group(1)), m.group(2)
        note = (
            f"PatientAge '{text}' is not DICOM AS (nnnD/W/M/Y); read as {_UNIT_NAMES[m.group(2)]}"
        )
    elif _BARE_NUMBER.fullmatch(text):
        count, unit = int(text), "Y"
        note = f"PatientAge '{text}' is not DICOM AS (nnnD/W/M/Y); read as years"
    else:
        return Age(None, AgeSource.UNKNOWN, "PatientAge is not an age (DICOM AS nnnD/W/M/Y)")
    years = count * _UNIT_YEARS[unit]
    if years > MAX_PLAUSIBLE_YEARS:
        return Age(None, AgeSource.UNKNOWN, f"PatientAge '{text}' is not a plausible age")
    return Age(years, AgeSource.PATIENT_AGE, note, f"{count} {_UNIT_LABELS[unit]}")


def _parse_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    m = _DATE.fullmatch(_plain(value))
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _anniversary(birth: date, year: int) -> date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a common year: the birthday is 1 March
        return date(year, 3, 1)


def years_between(birth: date, on: date) -> float:
    """Age on ``on`` of someone born on ``birth``: completed years + fraction of the next."""
    completed = on.year - birth.year
    if on < _anniversary(birth, on.year):
        completed -= 1
    last = _anniversary(birth, birth.year + completed)
    following = _anniversary(birth, birth.year + completed + 1)
    return completed + (on - last).days / (following - last).days


def _from_dates(header: HeaderSource) -> Age:
    raw_birth = _get(header, "PatientBirthDate")
    if not _plain(raw_birth):
        return Age(None, AgeSource.UNKNOWN, _BIRTH_ABSENT)
    birth = _parse_date(raw_birth)
    if birth is None:
        return Age(None, AgeSource.UNKNOWN, "PatientBirthDate is not a valid date")
    for keyword in REFERENCE_DATE_KEYWORDS:
        on = _parse_date(_get(header, keyword))
        if on is None:
            continue
        if on < birth:
            return Age(None, AgeSource.UNKNOWN, f"PatientBirthDate is after {keyword}")
        years = years_between(birth, on)
        if years > MAX_PLAUSIBLE_YEARS:
            return Age(
                None, AgeSource.UNKNOWN, f"PatientBirthDate and {keyword} give an implausible age"
            )
        return Age(years, AgeSource.BIRTH_DATE, f"from PatientBirthDate and {keyword}")
    return Age(
        None,
        AgeSource.UNKNOWN,
        "PatientBirthDate without a valid StudyDate, AcquisitionDate or SeriesDate",
    )


def derive_age(header: HeaderSource) -> Age:
    """The age at this instance (rules in the module docstring); never raises."""
    from_age = parse_age_string(_get(header, "PatientAge"))
    if from_age.known:
        return from_age
    from_dates = _from_dates(header)
    if from_age.note != _AGE_ABSENT:  # say why PatientAge was not used
        return Age(from_dates.years, from_dates.source, f"{from_age.note}; {from_dates.note}")
    if from_dates.note == _BIRTH_ABSENT:
        return Age(None, AgeSource.UNKNOWN, "PatientAge and PatientBirthDate absent")
    return from_dates


def format_age(years: float | None) -> str:
    """Staff-readable age: ``10 d``, ``6 mo`` under 2 years (``18 mo``), else completed years."""
    if years is None or not math.isfinite(years):
        return "unknown"
    if years < 1.0 / 12.0:
        return f"{round(years * DAYS_PER_YEAR)} d"
    if years < 2.0:
        return f"{math.floor(years * 12.0 + 1e-9)} mo"
    return f"{math.floor(years + 1e-9)} y"
