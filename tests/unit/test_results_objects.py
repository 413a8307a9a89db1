"""The Secondary Capture, the TID 1500 Structured Reports and the heatmap Segmentation
cxr-triage files into a study (IHE AI Results).

Built from a DICOM made in code and from committed samples, written to bytes, read back
with pydicom and highdicom, checked attribute by attribute; every object also passes
dciodvfy (dicom3tools) with no error and the SRs are parsed by DCMTK's dsrdump (real
peers, ``tests/peers.py``)."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from cxr_common.clinical import DISCLAIMER
from cxr_imaging import decode_dataset
from cxr_imaging.overlay import has_burned_in_annotation, heat_from_overlay
from cxr_results import (
    AnalysedImage,
    AnalysisStatus,
    ResultObjectError,
    build_heatmap_segmentation,
    build_not_analysed_report,
    build_secondary_capture,
    build_structured_report,
    is_our_dataset,
    is_our_uid,
    overlay_at_source_resolution,
    overlay_from_png,
    result_uids,
)
from cxr_results.objects import NOT_FOR_DIAGNOSTIC_USE, render_result_image
from cxr_results.render import SC_MAX_SIDE, font_safe
from tests.conftest import SAMPLES
from tests.dicom_factory import chest_like, make_dataset
from tests.peers import requires_peer
from tests.results_helpers import (
    SHA,
    UID_ROOT,
    heatmap,
    overlay,
    sr_groups,
    sr_items,
    sr_value,
    summary,
)

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
    sc, sr, _ = _all_objects(source, version)
    return sc, sr


def _all_objects(source: Dataset, version: int = 1) -> tuple[Dataset, Dataset, Dataset]:
    """(SC, SR, SEG) as the results sender builds them from a stored overlay."""
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, version)
    stored = overlay(source)
    sc = build_secondary_capture(source, stored, summary(), uids, max_side=512)
    seg = build_heatmap_segmentation(source, heat_from_overlay(stored), summary(), uids)
    sr = build_structured_report(source, summary(), uids, sc, segmentation=seg)
    return _round_trip(sc), _round_trip(sr), _round_trip(seg)


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
    assert "over the scored image" in sc.DerivationDescription


def test_objects_from_a_committed_sample_keep_its_patient_and_study() -> None:
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm")
    sc, sr, seg = _all_objects(source)
    for obj in (sc, sr, seg):
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
    assert referenced == {source.SOPInstanceUID, sc.SOPInstanceUID, seg.SOPInstanceUID}


def test_structured_report_holds_score_model_and_disclaimer() -> None:
    """TID 1500 with one TID 1501 group for the scored image: finding, probability,
    flag, threshold, calibration, algorithm (TID 4019), source image, SC and heatmap."""
    source = _source()
    sc, sr, seg = _all_objects(source)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.Modality == "SR"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    root = sr.ConceptNameCodeSequence[0]
    assert (root.CodeValue, root.CodingSchemeDesignator) == ("126000", "DCM")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = sr_items(sr)
    assert sr_value(items["Procedure reported"]) == ("399208008", "SCT")
    groups = sr_groups(sr)
    assert len(groups) == 1
    group = groups[0]
    assert sr_value(group["Comment"]) == DISCLAIMER
    assert sr_value(group["Tracking Identifier"]) == "Pneumonia image 1"
    tracking = sr_value(group["Tracking Unique Identifier"])
    assert isinstance(tracking, str)
    assert is_our_uid(tracking, UID_ROOT)
    assert sr_value(group["Analysis status"]) == ("SCORED", "99CXR")
    assert sr_value(group["Triage score"]) == pytest.approx(0.8123)
    assert sr_value(group["Operating threshold"]) == pytest.approx(0.2834)
    assert sr_value(group["Flagged for priority reading"]) == ("373066001", "SCT")
    assert sr_value(group["Finding"]) == ("233604007", "SCT")  # from model.json
    assert group["Finding"].ConceptCodeSequence[0].CodeMeaning == "Pneumonia"
    assert sr_value(group["Algorithm Name"]) == "cxr-pneumonia"
    assert sr_value(group["Algorithm Version"]) == "1.0.0-lite0-strong-e8"
    parameters = [
        str(i.TextValue)
        for i in group["Measurement Group"].ContentSequence
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert parameters == [
        "operating threshold 0.2834",
        "calibration 1.0.0-lite0-strong-e8-kermany-test-dev-1",
        f"weights sha256 {SHA}",
    ]
    assert sr_value(group["Population note"]).startswith("Calibrated on adult")
    assert sr_value(group["Source of Measurement"]) == (source.SOPClassUID, source.SOPInstanceUID)
    assert sr_value(group["Best illustration of finding"]) == (
        SecondaryCaptureImageStorage,
        sc.SOPInstanceUID,
    )
    assert sr_value(group["Heatmap (fractional segmentation)"]) == (
        SegmentationStorage,
        seg.SOPInstanceUID,
    )
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99CXR" in schemes


def test_structured_report_has_one_group_per_analysed_image() -> None:
    source = _source()
    second = make_dataset(chest_like(seed=3), study_uid=source.StudyInstanceUID)
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sr = _round_trip(
        build_structured_report(
            source,
            summary(),
            uids,
            others=[
                AnalysedImage(second, summary(0.05, flagged=False)),
                AnalysedImage(source, summary()),  # the same image twice: one group
            ],
        )
    )
    groups = sr_groups(sr)
    assert [sr_value(g["Source of Measurement"])[1] for g in groups] == [  # type: ignore[index]
        source.SOPInstanceUID,
        second.SOPInstanceUID,
    ]
    assert [sr_value(g["Tracking Identifier"]) for g in groups] == [
        "Pneumonia image 1",
        "Pneumonia image 2",
    ]
    assert sr_value(groups[1]["Triage score"]) == pytest.approx(0.05)
    assert sr_value(groups[1]["Flagged for priority reading"]) == ("373067005", "SCT")
    # the Tracking UID follows the image across result versions, and differs per image
    again = build_structured_report(
        source, summary(), result_uids(UID_ROOT, source.StudyInstanceUID, 2)
    )
    assert sr_value(sr_groups(again)[0]["Tracking Unique Identifier"]) == sr_value(
        groups[0]["Tracking Unique Identifier"]
    )
    assert sr_value(groups[0]["Tracking Unique Identifier"]) != sr_value(
        groups[1]["Tracking Unique Identifier"]
    )
    with pytest.raises(ResultObjectError, match="derived for study"):
        build_structured_report(
            source, summary(), uids, others=[AnalysedImage(make_dataset(), summary())]
        )


def test_shadow_score_says_not_analysed_for_triage_in_the_same_template() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    shadow = replace(
        summary(0.7, flagged=False), triage=False, population="outside", population_reason="age"
    )
    group = sr_groups(_round_trip(build_structured_report(source, shadow, uids)))[0]
    assert sr_value(group["Analysis status"]) == ("SHADOW", "99CXR")
    assert sr_value(group["Shadow score, not used for triage"]) == pytest.approx(0.7)
    assert "Triage score" not in group
    assert "Flagged for priority reading" not in group
    assert sr_value(group["Validated population"]) == ("OUTSIDE", "99CXR")
    assert str(sr_value(group["Population statement"])).startswith("OUTSIDE VALIDATED")


def test_structured_report_holds_the_score_interval_when_there_is_one() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    with_interval = replace(summary(), score_interval=(0.71, 0.88))
    items = sr_items(_round_trip(build_structured_report(source, with_interval, uids)))
    assert sr_value(items["Triage score"]) == pytest.approx(0.8123)
    assert sr_value(items["Score interval, lower end"]) == pytest.approx(0.71)
    assert sr_value(items["Score interval, upper end"]) == pytest.approx(0.88)
    plain = sr_items(_round_trip(build_structured_report(source, summary(), uids)))
    assert "Triage score" in plain
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
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # the same template
    groups = sr_groups(sr)
    assert len(groups) == 1  # one group per instance, the duplicate counted once
    items = groups[0]
    assert sr_value(items["Comment"]) == DISCLAIMER
    assert sr_value(items["Analysis status"]) == ("NOT_ELIGIBLE", "99CXR")
    assert sr_value(items["Reason not analysed"]) == "modality CT is not a chest radiograph (CR/DX)"
    assert sr_value(items["Algorithm Name"]) == "cxr-pneumonia"
    assert "Triage score" not in items
    assert sr_value(items["Source of Measurement"]) == (source.SOPClassUID, source.SOPInstanceUID)
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


# --------------------------------------------------------------------------- IHE AIR checks


def _write(ds: Dataset, folder: Path, name: str) -> Path:
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]


def _every_object(source: Dataset) -> dict[str, Dataset]:
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 2)
    stored = overlay(source)
    picture = overlay_at_source_resolution(
        decode_dataset(source).pixels, stored, neutral_field=has_burned_in_annotation(source)
    )
    sc = build_secondary_capture(source, picture, summary(), uids)
    seg = build_heatmap_segmentation(source, heat_from_overlay(stored), summary(), uids)
    sr = build_structured_report(
        source, summary(), uids, sc, segmentation=seg, supersedes_version=1
    )
    failed = build_not_analysed_report(
        [source], AnalysisStatus.FAILED, "pixel data could not be decoded", uids
    )
    return {"sc": sc, "seg": seg, "sr": sr, "not-analysed": failed}


@requires_peer("dicom3tools", "dcmtk")
@pytest.mark.parametrize("sample", ["code", "rsna-opacity-1.dcm"])
def test_every_object_passes_dciodvfy_dsrdump_and_reads_back_with_highdicom(
    tmp_path: Path, sample: str
) -> None:
    source = _source() if sample == "code" else pydicom.dcmread(SAMPLES / sample)
    for name, obj in _every_object(source).items():
        path = _write(obj, tmp_path, name)
        assert _dciodvfy_errors(path) == [], name
        if name in ("sr", "not-analysed"):
            dump = subprocess.run(
                ["dsrdump", str(path)], capture_output=True, text=True, timeout=60, check=False
            )
            assert dump.returncode == 0, dump.stderr
            assert "Imaging Measurement Report" in dump.stdout
            assert "Measurement Group" in dump.stdout
            report = hd.sr.srread(path)
            assert isinstance(report, hd.sr.Comprehensive3DSR)
            assert str(report.SOPInstanceUID) == str(obj.SOPInstanceUID)
        elif name == "seg":
            seg = hd.seg.segread(path)
            assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
            assert seg.get_segment_numbers() == [1]
        else:
            assert hd.imread(path).SOPClassUID == SecondaryCaptureImageStorage


def test_the_heatmap_segmentation_is_the_shown_heat_at_the_source_size() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    stored = overlay(source, heatmap(64))
    heat = heat_from_overlay(stored)
    seg = _round_trip(build_heatmap_segmentation(source, heat, summary(), uids))
    assert seg.SOPClassUID == SegmentationStorage
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.MaximumFractionalValue == 255
    assert seg.SOPInstanceUID == uids.seg_sop_instance_uid
    assert seg.SeriesInstanceUID == uids.seg_series_instance_uid
    assert seg.InstanceNumber == 1
    assert "FrameOfReferenceUID" not in seg  # a projection radiograph has none
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    ref = derivation.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert ref.SpatialLocationsPreserved == "YES"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "SALIENCY"
    assert "not a lesion outline" in segment.SegmentDescription
    assert NOT_FOR_DIAGNOSTIC_USE in seg.ContentDescription
    fractions = seg.pixel_array.astype(np.float32) / 255.0
    # the blob of the heatmap (left of centre) is where the fractions are high
    hot = np.unravel_index(np.argmax(fractions), fractions.shape)
    assert hot[1] < source.Columns / 2
    assert fractions.max() > 0.9
    assert fractions[:, -10:].max() < 0.1
    # highdicom reads the same fractions back
    read = hd.seg.segread(io.BytesIO(_bytes(seg)))
    assert read.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert np.array_equal(np.asarray(read.pixel_array), np.asarray(seg.pixel_array))


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_heatmap_segmentation_refuses_bad_input() -> None:
    source = _source()
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    with pytest.raises(ResultObjectError, match="2-D heatmap"):
        build_heatmap_segmentation(source, np.zeros((4, 4, 3)), summary(), uids)
    with pytest.raises(ResultObjectError, match="derived for study"):
        build_heatmap_segmentation(source, heatmap(), summary(), result_uids(UID_ROOT, "1.2.3", 1))
    del source.Rows
    with pytest.raises(ResultObjectError, match="Rows/Columns"):
        build_heatmap_segmentation(source, heatmap(), summary(), uids)


def test_secondary_capture_is_at_the_source_resolution_up_to_the_cap() -> None:
    """The stored overlay is at most 512 px; the SC draws its heat again over the
    radiograph at the radiograph's size, capped at SC_MAX_SIDE on the longer side."""
    for shape, columns in (((1200, 1000), 1000), ((3000, 2500), round(2500 * 2048 / 3000))):
        source = make_dataset(_smooth(shape))
        stored = overlay(source)
        assert max(stored.shape[:2]) == 512
        picture = overlay_at_source_resolution(
            decode_dataset(source).pixels, stored, neutral_field=False
        )
        assert max(picture.shape[:2]) <= SC_MAX_SIDE
        sc = build_secondary_capture(
            source, picture, summary(), result_uids(UID_ROOT, source.StudyInstanceUID, 1)
        )
        assert sc.Columns == columns
        assert f"{columns} x" in sc.DerivationDescription


def _smooth(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((np.sin(yy / 40.0) + np.cos(xx / 55.0) + 2) * 60).astype(np.uint8)


def test_secondary_capture_source_is_described_as_a_neutral_field() -> None:
    """A Secondary Capture source (the worker's burned-in rule) gets its heatmap on grey,
    and the SC says so; never "over the scored image"."""
    source = make_dataset(sop_class=SecondaryCaptureImageStorage, modality="CR")
    stored = overlay(source)
    picture = overlay_at_source_resolution(
        decode_dataset(source).pixels, stored, neutral_field=True
    )
    sc = build_secondary_capture(
        source, picture, summary(), result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    )
    assert "neutral grey field" in sc.DerivationDescription
    assert "over the scored image" not in sc.DerivationDescription
    # the grey field: the source's pixels do not show where the heat is 0
    corner = np.asarray(sc.pixel_array)[-60:-50, -10:]
    assert np.ptp(corner) <= 2


def test_text_is_reduced_to_glyphs_the_font_has() -> None:
    assert (
        font_safe("age 18\u201365 y \u2265 0.5 \u2014 \u201cok\u201d")
        == 'age 18-65 y >= 0.5 - "ok"'
    )
    assert font_safe("caf\u00e9") == "caf?"
    source = _source()
    shadow = replace(
        summary(0.7, flagged=False),
        triage=False,
        population="outside",
        population_reason="age 10 y outside 18\u2013120 y",
    )
    sc = build_secondary_capture(
        source,
        overlay(source),
        shadow,
        result_uids(UID_ROOT, source.StudyInstanceUID, 1),
    )
    assert "18-120 y" in sc.DerivationDescription
    assert sc.DerivationDescription.isascii()
