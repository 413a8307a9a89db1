"""The study patient's identity (``cxr_ingest.identity``): what counts as the same value,
keyed hashes without values, and the per-install key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from cxr_common.errors import ConfigurationError
from cxr_ingest.identity import (
    IDENTITY_KEYWORDS,
    load_or_create_patient_key,
    normalise,
    patient_identity,
)

KEY = b"0123456789abcdef0123456789abcdef"


def _ds(**values: str) -> Dataset:
    ds = Dataset()
    base = {
        "PatientID": "MRN-1",
        "IssuerOfPatientID": "HOSP",
        "PatientName": "DOE^JANE",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
    }
    for keyword, value in {**base, **values}.items():
        if value != "<absent>":
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("keyword", "a", "b", "same"),
    [
        ("PatientName", "DOE^JANE", "doe^jane", True),
        ("PatientName", "DOE^JANE", " DOE ^ JANE ^^^", True),
        ("PatientName", "DOE^JANE", "DOE^JANE=ドウ^ジェーン", True),
        ("PatientName", "DOE^JANE", "DOE^JOHN", False),
        ("PatientName", "DOE^JANE", "JANE^DOE", False),
        ("PatientName", "DOE^JANE", "DOE^JANE^Q", False),
        ("PatientName", "VAN  DER^JAN", "van der^jan", True),
        ("PatientSex", "F", "f ", True),
        ("PatientSex", "F", "M", False),
        ("PatientID", "MRN-1", " MRN-1 ", True),
        ("PatientID", "mrn-1", "MRN-1", False),  # identifiers are opaque: case matters
        ("IssuerOfPatientID", "HOSP", "HOSP2", False),
        ("PatientBirthDate", "19700101", "1970-01-01", False),
        ("PatientBirthDate", "19700101", "", False),
        ("PatientID", "", None, True),  # empty and absent are the same: no value
    ],
)
def test_what_counts_as_the_same_value(keyword: str, a: str, b: str | None, same: bool) -> None:
    assert (normalise(keyword, a) == normalise(keyword, b)) is same


def test_the_identity_holds_keyed_hashes_and_names_what_differs() -> None:
    a = patient_identity(_ds(), KEY)
    assert set(a.as_json()) == {"form", "key", *IDENTITY_KEYWORDS}
    assert all(len(h) == 16 for h in a.hashes.values())
    for value in ("MRN-1", "HOSP", "DOE", "JANE", "19700101"):
        assert value not in str(a.as_json())
    assert patient_identity(_ds(PatientName="doe^jane "), KEY) == a
    b = patient_identity(_ds(PatientID="MRN-2", PatientBirthDate="<absent>"), KEY)
    assert b.differing(a) == ("PatientID", "PatientBirthDate")
    other_key = patient_identity(_ds(), b"another key, 16+ bytes")
    assert not other_key.same_key(a)
    assert other_key.hashes != a.hashes  # keyed: not a plain sha256 of the values
    again = type(a).from_json(a.as_json())
    assert again == a


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "patient-key"
    key = load_or_create_patient_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_patient_key(path) == key
    assert load_or_create_patient_key(path, "configured secret") == b"configured secret"
    assert [p.name for p in path.parent.iterdir()] == ["patient-key"]
    path.write_text("not hex\n")
    with pytest.raises(ConfigurationError, match="CXR_PATIENT_KEY"):
        load_or_create_patient_key(path)
