"""Eligibility: only frontal chest radiographs are scored; every refusal has a reason."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
)

from cxr_imaging import Eligibility, check_eligibility, is_chest_radiograph

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_triage" / "samples"


def _manifest() -> list[dict[str, str]]:
    with (SAMPLES / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


MANIFEST = _manifest()


def chest(**attrs: object) -> Dataset:
    """A frontal chest CR header; ``attrs`` override or (value None) delete elements."""
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows = 1024
    ds.Columns = 1024
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def test_manifest_lists_every_committed_sample() -> None:
    listed = {row["file"] for row in MANIFEST}
    on_disk = {p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.dcm")}
    assert listed == on_disk
    assert len(listed) == 16


@pytest.mark.parametrize("row", MANIFEST, ids=[row["file"] for row in MANIFEST])
def test_sample_eligibility_matches_manifest(row: dict[str, str]) -> None:
    ds = pydicom.dcmread(SAMPLES / row["file"], stop_before_pixels=True)
    result = check_eligibility(ds)
    assert result.eligible is (row["expected_eligible"] == "yes")
    assert result.reason == (row["expected_reason"] or None)


@pytest.mark.parametrize(
    ("name", "eligible", "reason"),
    [
        ("ct-small.dcm", False, "modality CT is not a chest radiograph (CR/DX)"),
        ("nm-jpeg-extended.dcm", False, "modality NM is not a chest radiograph (CR/DX)"),
        ("rg3-j2k-extremity.dcm", False, "body part EXTREMITY is not chest"),
        ("rg1-j2k-monochrome1-16bit.dcm", True, None),
        ("siim-chest-1.dcm", True, None),
        ("fake-monochrome1.dcm", True, None),
        ("rsna-normal-1.dcm", True, None),
        ("rsna-opacity-1.dcm", True, None),
        ("nih-nofinding-1.dcm", True, None),
    ],
)
def test_robustness_files(name: str, eligible: bool, reason: str | None) -> None:
    result = check_eligibility(pydicom.dcmread(SAMPLES / name, stop_before_pixels=True))
    assert result == Eligibility(eligible, reason)


def test_ot_abdomen_is_refused_as_modality_ot() -> None:
    ds = pydicom.dcmread(SAMPLES / "ot-abdomen.dcm", stop_before_pixels=True)
    result = check_eligibility(ds)
    assert not result.eligible
    assert result.reason is not None
    assert result.reason.startswith("modality OT is not a chest radiograph (CR/DX)")


def test_frontal_chest_cr_is_eligible() -> None:
    assert check_eligibility(chest()) == Eligibility(True, None)


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_lateral_view_position_is_refused(view: str) -> None:
    result = check_eligibility(chest(ViewPosition=view))
    assert result == Eligibility(
        False, f"lateral view (ViewPosition {view}) is not scored; frontal PA/AP only"
    )


def test_lateral_in_series_description_is_refused_when_view_position_absent() -> None:
    result = check_eligibility(chest(ViewPosition=None, SeriesDescription="Chest LAT"))
    assert not result.eligible
    assert result.reason is not None
    assert "lateral view (SeriesDescription names a lateral view)" in result.reason


def test_lateral_in_protocol_name_is_refused() -> None:
    result = check_eligibility(chest(ViewPosition="", ProtocolName="THORAX LATERAL"))
    assert not result.eligible


def test_frontal_view_position_outranks_a_study_wide_description() -> None:
    result = check_eligibility(chest(ViewPosition="AP", SeriesDescription="CHEST PA AND LAT"))
    assert result.eligible


def test_bilateral_is_not_lateral() -> None:
    assert check_eligibility(chest(ViewPosition=None, SeriesDescription="BILATERAL")).eligible


def test_lateral_view_code_sequence_is_refused() -> None:
    code = Dataset()
    code.CodeValue = "R-10236"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "left lateral"
    result = check_eligibility(chest(ViewPosition=None, ViewCodeSequence=Sequence([code])))
    assert not result.eligible


@pytest.mark.parametrize("modality", ["CT", "MR", "NM", "US", "PT", "MG"])
def test_other_modalities_are_refused(modality: str) -> None:
    result = check_eligibility(chest(Modality=modality, SOPClassUID=CTImageStorage))
    assert result == Eligibility(False, f"modality {modality} is not a chest radiograph (CR/DX)")


@pytest.mark.parametrize("body_part", ["EXTREMITY", "ABDOMEN", "SKULL", "PELVIS"])
def test_other_body_parts_are_refused(body_part: str) -> None:
    result = check_eligibility(chest(Modality="DX", BodyPartExamined=body_part))
    assert result == Eligibility(False, f"body part {body_part} is not chest")


@pytest.mark.parametrize(
    "body_part",
    [
        "CHEST",
        "THORAX",
        "LUNG",
        # lower case is invalid for a CS value, and modalities send it anyway
        pytest.param(
            "chest",
            marks=pytest.mark.filterwarnings(
                "ignore:Invalid value for VR CS:UserWarning:pydicom\\.valuerep"
            ),
        ),
    ],
)
def test_chest_body_parts_are_accepted(body_part: str) -> None:
    assert check_eligibility(chest(BodyPartExamined=body_part)).eligible


def test_absent_body_part_is_allowed() -> None:
    assert check_eligibility(chest(Modality="DX", BodyPartExamined=None)).eligible


def test_secondary_capture_with_modality_ot_needs_body_part_chest() -> None:
    sc = {"SOPClassUID": SecondaryCaptureImageStorage, "ViewPosition": None}
    assert check_eligibility(chest(Modality="OT", **sc)).eligible
    assert check_eligibility(chest(Modality=None, **sc)).eligible
    refused = check_eligibility(chest(Modality="OT", BodyPartExamined=None, **sc))
    assert not refused.eligible
    assert refused.reason is not None
    assert refused.reason.startswith("modality OT is not a chest radiograph")
    missing = check_eligibility(chest(Modality=None, BodyPartExamined=None, **sc))
    assert missing.reason is not None
    assert missing.reason.startswith("modality (absent) is not a chest radiograph")


def test_ot_without_secondary_capture_sop_class_is_refused() -> None:
    assert not check_eligibility(chest(Modality="OT")).eligible


def test_images_smaller_than_64_px_are_refused() -> None:
    result = check_eligibility(chest(Rows=63, Columns=512))
    assert result == Eligibility(False, "image 512x63 is too small (< 64 px)")
    assert check_eligibility(chest(Rows=64, Columns=64)).eligible


NAME = "DOE^JANE"


@pytest.mark.parametrize(
    "attrs",
    [
        {"ViewPosition": None, "SeriesDescription": f"Chest LAT {NAME}"},
        {"ViewPosition": "", "ProtocolName": f"LATERAL for {NAME}"},
        {"ViewPosition": None, "AcquisitionDeviceProcessingDescription": f"LAT {NAME}"},
        {"Modality": "DOE JANE X", "SOPClassUID": CTImageStorage},
        {"Modality": "DX", "BodyPartExamined": "DOE^JANE LEG"},
        {"Modality": "DX", "BodyPartExamined": "JANE DOE ABDOMEN"},
    ],
    ids=["series", "protocol", "processing", "modality", "body-part-caret", "body-part-long"],
)
def test_reasons_never_copy_free_text(attrs: dict[str, str | None]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: not a valid CS, on purpose
        ds = chest(**attrs)
    result = check_eligibility(ds)
    assert not result.eligible
    assert result.reason is not None
    for part in ("DOE", "JANE"):
        assert part not in result.reason.upper()


def test_lateral_view_code_is_named_by_its_code_not_its_meaning() -> None:
    code = Dataset()
    code.CodeValue = "R-10236"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = f"left lateral {NAME}"
    result = check_eligibility(chest(ViewPosition=None, ViewCodeSequence=Sequence([code])))
    assert result.reason == (
        "lateral view (ViewCodeSequence code SRT R-10236) is not scored; frontal PA/AP only"
    )


def test_a_chest_radiograph_is_told_apart_from_other_studies() -> None:
    """Results: a lateral or tiny chest film still gets a not-analysed report; a CT or an
    abdomen film gets none (is_chest_radiograph looks at modality and body part only)."""
    assert is_chest_radiograph(chest())
    assert is_chest_radiograph(chest(ViewPosition="LL"))
    assert is_chest_radiograph(chest(Rows=32, Columns=32))
    assert not is_chest_radiograph(chest(Modality="CT"))
    assert not is_chest_radiograph(chest(BodyPartExamined="ABDOMEN"))
    assert not is_chest_radiograph(
        pydicom.dcmread(SAMPLES / "ot-abdomen.dcm", stop_before_pixels=True)
    )
    assert not is_chest_radiograph(
        pydicom.dcmread(SAMPLES / "ct-small.dcm", stop_before_pixels=True)
    )
