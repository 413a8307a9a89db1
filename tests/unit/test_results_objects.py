"""The Secondary Capture and Structured Reports cxr-triage files into a study.

Built from a DICOM made in code and from committed samples, written to bytes, read back
with pydicom, checked attribute by attribute (no services needed)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from cxr_common.clinical import DISCLAIMER
from cxr_imaging import decode_dataset
from cxr_results import (
    AnalysisStatus,
    ResultObjectError,
    build_not_analysed_report,
    build_secondary_capture,
    build_structured_report,
    is_our_dataset,
    is_our_uid,
    overlay_from_png,
    result_uids,
)
from cxr_results.objects import NOT_FOR_DIAGNOSTIC_USE, render_result_image
from tests.conftest import SAMPLES
from tests.dicom_factory import chest_like, make_dataset
from tests.results_helpers import SHA, UID_ROOT, overlay, sr_items, sr_value, summary

PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


def _round_trip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _source() -> Dataset:
    ds = make_dataset()
    ds.PatientName = "Test^Only"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = "Referrer^Test"
    ds.StudyID = "S1"
    return ds


def _objects(source: Dataset, version: int = 1) -> tuple[Dataset, Dataset]:
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, version)
    sc = build_secondary_capture(source, overlay(source), summary(), uids, max_side=512)
    sr = build_structured_report(source, summary(), uids, sc)
    return _round_trip(sc), _round_trip(sr)


def _check_filed_with(obj: Dataset, source: Dataset) -> None:
    for keyword in PATIENT_STUDY:
        assert obj.get(keyword) == source.get(keyword), keyword
    assert obj.SeriesInstanceUID != source.SeriesInstanceUID
    for uid in (obj.SOPInstanceUID, obj.SeriesInstanceUID):
        assert is_our_uid(uid, UID_ROOT)
        assert len(uid) <= 64
    assert is_our_dataset(obj, UID_ROOT)
    assert not is_our_dataset(source, UID_ROOT)


def test_secondary_capture_from_a_dataset_built_in_code() -> None:
    source = _source()
    sc, _ = _objects(source)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
    _check_filed_with(sc, source)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.SamplesPerPixel == 3
    assert sc.Modality == "OT"
    assert sc.Manufacturer == "cxr-triage"
    assert sc.SeriesDescription == "cxr-triage heatmap cxr-pneumonia 1.0.0-lite0-strong-e8"
    assert sc.InstanceNumber == 1
    for seq in (sc.SourceImageSequence, sc.ReferencedImageSequence):
        assert len(seq) == 1
        assert seq[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert seq[0].ReferencedSOPClassUID == source.SOPClassUID
    assert NOT_FOR_DIAGNOSTIC_USE in sc.ImageComments
    pixels = sc.pixel_array
    assert pixels.shape == (sc.Rows, sc.Columns, 3)
    assert sc.Columns == 256  # the stored overlay's own size: never scaled up
    assert "Heatmap of model" in sc.DerivationDescription


def test_objects_from_a_committed_sample_keep_its_patient_and_study() -> None:
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm")
    sc, sr = _objects(source)
    for obj in (sc, sr):
        _check_filed_with(obj, source)
    assert sc.PatientID == source.PatientID != ""
    # the source was JPEG Baseline: the derived picture has been through lossy compression
    assert sc.LossyImageCompression == "01"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = {
        sop.ReferencedSOPInstanceUID
        for series in evidence.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == {source.SOPInstanceUID, sc.SOPInstanceUID}


def test_structured_report_holds_score_model_and_disclaimer() -> None:
    source = _source()
    sc, sr = _objects(source)
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.Modality == "SR"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    root = sr.ConceptNameCodeSequence[0]
    assert (root.CodeValue, root.CodingSchemeDesignator) == ("18748-4", "LN")
    items = sr_items(sr)
    assert sr_value(items["Comment"]) == DISCLAIMER
    contains = [i for i in sr.ContentSequence if i.RelationshipType == "CONTAINS"]
    assert contains[0].ConceptNameCodeSequence[0].CodeMeaning == "Comment"  # read first
    assert sr_value(items["Analysis status"]) == ("SCORED", "99CXR")
    assert sr_value(items["Triage score"]) == pytest.approx(0.8123)
    assert sr_value(items["Operating threshold"]) == pytest.approx(0.2834)
    assert sr_value(items["Flagged for priority reading"]) == ("373066001", "SCT")
    assert sr_value(items["Finding scored"]) == ("233604007", "SCT")  # from model.json
    assert items["Finding scored"].ConceptCodeSequence[0].CodeMeaning == "Pneumonia"
    assert sr_value(items["Algorithm Name"]) == "cxr-pneumonia"
    assert sr_value(items["Algorithm Version"]) == "1.0.0-lite0-strong-e8"
    assert sr_value(items["Model weights SHA-256"]) == SHA
    assert sr_value(items["Calibration version"]) == "1.0.0-lite0-strong-e8-kermany-test-dev-1"
    assert sr_value(items["Population note"]).startswith("Calibrated on adult")
    assert sr_value(items["Source of Measurement"]) == (source.SOPClassUID, source.SOPInstanceUID)
    assert sr_value(items["Best illustration of finding"]) == (
        SecondaryCaptureImageStorage,
        sc.SOPInstanceUID,
    )
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99CXR" in schemes


def test_structured_report_holds_the_score_interval_when_there_is_one() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    with_interval = replace(summary(), score_interval=(0.71, 0.88))
    items = sr_items(_round_trip(build_structured_report(source, with_interval, uids)))
    assert sr_value(items["Triage score"]) == pytest.approx(0.8123)
    assert sr_value(items["Score interval, lower end"]) == pytest.approx(0.71)
    assert sr_value(items["Score interval, upper end"]) == pytest.approx(0.88)
    plain = sr_items(_round_trip(build_structured_report(source, summary(), uids)))
    assert "Score interval, lower end" not in plain


def test_not_flagged_result_says_no() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sr = _round_trip(build_structured_report(source, summary(0.05, flagged=False), uids))
    assert sr_value(sr_items(sr)["Flagged for priority reading"]) == ("373067005", "SCT")
    assert "Best illustration of finding" not in sr_items(sr)


def test_a_new_result_version_supersedes_in_the_same_series() -> None:
    source = _source()
    sc1, sr1 = _objects(source, version=1)
    sc2_built = build_secondary_capture(
        source,
        overlay(source),
        summary(0.9),
        result_uids(UID_ROOT, source.StudyInstanceUID, 2),
        max_side=256,
    )
    sr2 = _round_trip(
        build_structured_report(
            source,
            summary(0.9),
            result_uids(UID_ROOT, source.StudyInstanceUID, 2),
            sc2_built,
            supersedes_version=1,
        )
    )
    sc2 = _round_trip(sc2_built)
    assert sc2.SeriesInstanceUID == sc1.SeriesInstanceUID
    assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert sc2.SOPInstanceUID != sc1.SOPInstanceUID
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID
    assert (sc2.InstanceNumber, sr2.InstanceNumber) == (2, 2)
    predecessor = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    with pytest.raises(ResultObjectError, match="cannot supersede"):
        build_structured_report(
            source,
            summary(),
            result_uids(UID_ROOT, source.StudyInstanceUID, 2),
            supersedes_version=2,
        )


def test_rebuilding_a_version_gives_the_same_uids() -> None:
    source = _source()
    first, _ = _objects(source)
    again, _ = _objects(source)
    assert again.SOPInstanceUID == first.SOPInstanceUID


def test_burned_in_annotation_puts_the_heatmap_on_a_neutral_field() -> None:
    """Overlay (the worker's rule) or no overlay (grey here): the source pixels of a
    burned-in image never reach the picture."""
    a = make_dataset(chest_like(seed=1))
    b = make_dataset(np.zeros((256, 256), np.uint8) + 255, study_uid=a.StudyInstanceUID)
    uids = result_uids(UID_ROOT, a.StudyInstanceUID, 1)

    def with_overlay(ds: Dataset) -> np.ndarray:
        sc = build_secondary_capture(ds, overlay(ds), summary(), uids, max_side=256)
        return np.asarray(sc.pixel_array)

    def without_overlay(ds: Dataset) -> np.ndarray:
        sc = build_secondary_capture(ds, decode_dataset(ds).pixels, summary(), uids, max_side=256)
        assert "without heatmap" in sc.DerivationDescription
        return np.asarray(sc.pixel_array)

    for picture in (with_overlay, without_overlay):
        assert not np.array_equal(picture(a), picture(b))  # without the flag: pixels show
    a.BurnedInAnnotation = "YES"
    b.BurnedInAnnotation = "YES"
    for picture in (with_overlay, without_overlay):
        assert np.array_equal(picture(a), picture(b))


def test_burned_in_text_has_no_patient_data() -> None:
    """The picture depends only on the result: two patients, same pixels, same picture."""
    one, two = _source(), _source()
    two.PatientName = "Other^Person"
    two.PatientID = "OTHER-ID"
    two.AccessionNumber = "ACC999"
    picture = overlay(one)
    pics = [
        build_secondary_capture(
            ds,
            picture,
            summary(),
            result_uids(UID_ROOT, ds.StudyInstanceUID, 1),
            max_side=256,
        ).pixel_array
        for ds in (one, two)
    ]
    assert np.array_equal(pics[0], pics[1])


def test_rendered_picture_has_text_bands_and_the_heatmap() -> None:
    source = _source()
    plain = render_result_image(decode_dataset(source).pixels, summary(), max_side=300)
    heat = render_result_image(overlay(source), summary(), max_side=300)
    small = render_result_image(overlay(source), summary(), max_side=128)
    assert plain.dtype == heat.dtype == np.uint8
    assert plain.shape[1] == heat.shape[1] == 256  # never scaled up
    assert small.shape[1] == 128  # scaled down to max_side
    top = heat[:20]
    assert (top == 16).mean() > 0.5  # a dark text band above the image

    def red(rgb: np.ndarray) -> np.ndarray:
        return (rgb[..., 0].astype(int) - rgb[..., 2].astype(int)) > 100

    # the hot spot of the heatmap (the orange flag text is red in both)
    assert red(heat).sum() > red(plain).sum() + 500
    with pytest.raises(ResultObjectError, match="heatmap overlay"):
        render_result_image(np.zeros((4, 4, 3)), summary())
    with pytest.raises(ResultObjectError, match="not a readable PNG"):
        overlay_from_png(b"not a png")


def test_not_eligible_study_gets_a_short_report_saying_why() -> None:
    source = pydicom.dcmread(SAMPLES / "ct-small.dcm", stop_before_pixels=True)
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sr = _round_trip(
        build_not_analysed_report(
            [source, source],
            AnalysisStatus.NOT_ELIGIBLE,
            "modality CT is not a chest radiograph (CR/DX)",
            uids,
            model_name="cxr-pneumonia",
            model_version="1.0.0",
        )
    )
    _check_filed_with(sr, source)
    items = sr_items(sr)
    assert sr_value(items["Comment"]) == DISCLAIMER
    assert sr_value(items["Analysis status"]) == ("NOT_ELIGIBLE", "99CXR")
    assert sr_value(items["Reason not analysed"]) == "modality CT is not a chest radiograph (CR/DX)"
    assert "Triage score" not in items
    seen = [i for i in sr.ContentSequence if i.ValueType == "IMAGE"]
    assert [sr_value(i) for i in seen] == [(source.SOPClassUID, source.SOPInstanceUID)]
    assert sr.SeriesDescription == "cxr-triage not analysed (not eligible)"


def test_failed_study_report() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sr = build_not_analysed_report(
        [source], AnalysisStatus.FAILED, "pixel data could not be decoded", uids
    )
    assert sr_value(sr_items(sr)["Analysis status"]) == ("FAILED", "99CXR")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("other_study", "derived for study"),
        ("no_sop_uid", "no SOPInstanceUID"),
    ],
)
def test_bad_inputs_get_a_clear_error(change: str, message: str) -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    if change == "other_study":
        uids = result_uids(UID_ROOT, "1.2.3", 1)
    else:
        del source.SOPInstanceUID
    with pytest.raises(ResultObjectError, match=message):
        build_structured_report(source, summary(), uids)
    with pytest.raises(ResultObjectError, match=message):
        build_secondary_capture(source, chest_like() / 255.0, summary(), uids)


def test_wrong_report_kind_is_refused() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    with pytest.raises(ResultObjectError, match="build_structured_report"):
        build_not_analysed_report([source], AnalysisStatus.SCORED, "x", uids)
    with pytest.raises(ResultObjectError, match="needs a reason"):
        build_not_analysed_report([source], AnalysisStatus.FAILED, " ", uids)
    with pytest.raises(ResultObjectError, match="at least one"):
        build_not_analysed_report([], AnalysisStatus.FAILED, "x", uids)


def test_the_package_stays_pure() -> None:
    """No database, queue or model code comes with cxr_results (the listener imports it)."""
    import subprocess
    import sys

    code = (
        "import sys, cxr_results; "
        "print(sorted(m for m in ('torch', 'cxr_db', 'cxr_queue', 'cxr_model', 'celery', "
        "'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
