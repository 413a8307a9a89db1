"""The DICOM objects cxr-triage files into the study it scored (IHE AI Results).

For each result version of a study (see :mod:`cxr_results.uids`):

* a **Secondary Capture** image (:func:`build_secondary_capture`, highdicom ``SCImage``,
  RGB, Explicit VR Little Endian), the human-readable fallback: the heatmap drawn over the
  scored radiograph at the radiograph's own resolution (up to 2048 px on the longer side,
  :mod:`cxr_results.render`), with a dark band above it with "NOT FOR DIAGNOSTIC USE", the
  score, the threshold, the flag and the model, and a band below with the clinical-support
  statement. The text never holds patient data. When the source may carry burned-in text
  (:func:`cxr_imaging.overlay.has_burned_in_annotation`: BurnedInAnnotation YES, a
  Secondary Capture, or a conversion) the heatmap is drawn on a neutral grey field, and
  the Derivation Description says which of the two it is.
* a **Comprehensive 3D SR** following TID 1500 "Imaging Measurement Report"
  (:func:`build_structured_report`, highdicom ``MeasurementReport``), one TID 1501
  measurement group per analysed image (tree below);
* the heatmap as data (:mod:`cxr_results.heatmap_seg`): a FRACTIONAL Segmentation.
* for a chest radiograph study that was seen but not analysed (failed, not frontal), the
  same TID 1500 report with one group per instance saying so and why
  (:func:`build_not_analysed_report`).

Patient and study attributes are copied verbatim from the source (PatientName, PatientID,
IssuerOfPatientID, PatientBirthDate, PatientSex, StudyInstanceUID, StudyDate, StudyTime,
AccessionNumber, ReferringPhysicianName, StudyID, SpecificCharacterSet) so the PACS files
the objects with the original; nothing else about the patient is copied.

Superseding rule
    A result version ``n`` (1, 2, ...) reuses the study's result series (same
    SeriesInstanceUID for every version), gets new SOP Instance UIDs and
    ``InstanceNumber = n``, so the newest result sorts last in each series and the older
    ones stay for audit. The SR of version ``n`` may also list the SR of the version it
    replaces in PredecessorDocumentsSequence (``supersedes_version``; pass the version
    whose SR was actually sent). Rebuilding the same version gives the same UIDs.

SR content tree (TID 1500; value type, relationship, concept)::

    CONTAINER  DCM 126000 "Imaging Measurement Report" (TID 1500)
      HAS CONCEPT MOD  CODE  DCM 121049 Language = RFC5646 en-US
      HAS OBS CONTEXT  DCM 121005 Observer Type = Device (UID, name, manufacturer, model)
      HAS CONCEPT MOD  CODE  DCM 121058 Procedure reported = SCT 399208008 Plain X-ray of chest
      CONTAINS  CONTAINER  DCM 126010 Imaging Measurements
        CONTAINS  CONTAINER  DCM 125007 Measurement Group (TID 1501), one per image:
          HAS OBS CONTEXT  TEXT  DCM 112039 Tracking Identifier = "<finding> image <n>"
          HAS OBS CONTEXT  UIDREF DCM 112040 Tracking Unique Identifier (per study + image)
          CONTAINS  CODE   DCM 121071 Finding = the model's finding as its model.json
                           codes it (SCT 233604007 "Pneumonia" for the shipped model)
          HAS CONCEPT MOD  TEXT DCM 111001 Algorithm Name, 111003 Algorithm Version,
                           111002 Algorithm Parameters (threshold, calibration, weights
                           SHA-256) (TID 4019)
          CONTAINS  IMAGE  DCM 121112 Source of Measurement (the analysed image)
          CONTAINS  NUM    99CXR SCORE "Triage score" (UCUM 1, the calibrated probability)
                           or 99CXR SHADOW_SCORE "Shadow score, not used for triage"
          CONTAINS  NUM    99CXR SCORE_LOWER / SCORE_UPPER (the score's 95% interval, when
                           the calibration gives one)
          CONTAINS  NUM    99CXR THRESHOLD "Operating threshold" (UCUM 1)
          CONTAINS  CODE   99CXR STATUS "Analysis status" = SCORED | SHADOW (outside the
                           validated population: not analysed for triage) | NOT_ELIGIBLE |
                           FAILED
          CONTAINS  CODE   99CXR FLAG "Flagged for priority reading" = SCT Yes | No
                           (only a score that triaged)
          CONTAINS  CODE   99CXR POPULATION_STATUS = IN_SCOPE | OUTSIDE | UNKNOWN
          CONTAINS  TEXT   DCM 121106 Comment = the clinical-support statement
          CONTAINS  TEXT   99CXR POPULATION_STATEMENT, POPULATION (population note),
                           REASON "Reason not analysed"            (when they apply)
          CONTAINS  IMAGE  DCM 121080 "Best illustration of finding" -> the Secondary Capture
          CONTAINS  IMAGE  99CXR HEATMAP "Heatmap (fractional segmentation)" -> the SEG

``99CXR`` is our private coding scheme (PS3.3 8.2: designators starting "99" are local);
it is declared in each SR's CodingSchemeIdentificationSequence, and its codes are listed
in :data:`CXR_CODES`. The measurement groups only contain what TID 1501 lists plus
CONTAINS TEXT/IMAGE items (the template is extensible).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian

from cxr_common.clinical import DISCLAIMER
from cxr_common.model_files import ModelFinding
from cxr_imaging.overlay import has_burned_in_annotation
from cxr_results.errors import ResultObjectError
from cxr_results.render import (
    NOT_FOR_DIAGNOSTIC_USE,
    SC_MAX_SIDE,
    font_safe,
    overlay_from_png,
    render_result_image,
)
from cxr_results.summary import AnalysisStatus, ResultSummary, population_statement
from cxr_results.uids import MANUFACTURER, SERIES_DESCRIPTION_PREFIX, ResultUids, result_uids

__all__ = [
    "CODING_SCHEME",
    "CXR_CODES",
    "NOT_FOR_DIAGNOSTIC_USE",
    "SC_MAX_SIDE",
    "SC_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "AnalysedImage",
    "AnalysisStatus",
    "ResultSummary",
    "build_not_analysed_report",
    "build_secondary_capture",
    "build_structured_report",
    "overlay_from_png",
    "render_result_image",
]

logger = logging.getLogger(__name__)

#: SeriesNumber of the result series (high, so they sort after the acquired series).
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
CODING_SCHEME = "99CXR"
PATIENT_ORIENTATION = 0x00200020
LATERALITY = 0x00200060

#: Patient and study attributes copied verbatim from the source.
COPIED_ATTRIBUTES = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


#: Our private codes (coding scheme designator ``99CXR``), by CodeValue.
CXR_CODES: dict[str, str] = {
    "STATUS": "Analysis status",
    "SCORED": "Scored by the triage model",
    "NOT_ELIGIBLE": "Not analysed: not eligible",
    "FAILED": "Not analysed: processing failed",
    "REASON": "Reason not analysed",
    "SCORE": "Triage score",
    "THRESHOLD": "Operating threshold",
    "FLAG": "Flagged for priority reading",
    "FINDING": "Finding scored",
    "WEIGHTS_SHA256": "Model weights SHA-256",
    "CALIBRATION": "Calibration version",
    "SHADOW": "Not analysed for triage: outside the validated population",
    "HEATMAP": "Heatmap (fractional segmentation)",
    "SALIENCY": "Model saliency (Grad-CAM), not a lesion outline",
    "POPULATION": "Population note",
    "SHADOW_SCORE": "Shadow score, not used for triage",
    "POPULATION_STATUS": "Validated population",
    "IN_SCOPE": "Within the validated population",
    "OUTSIDE": "Outside the validated population",
    "UNKNOWN": "Population unknown",
    "POPULATION_STATEMENT": "Population statement",
    "SEEN": "Instance seen, not analysed",
    "SCORE_LOWER": "Score interval, lower end",
    "SCORE_UPPER": "Score interval, upper end",
}


def _cxr(value: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=CXR_CODES[value])


_STATUS_CODE = {
    AnalysisStatus.SCORED: "SCORED",
    AnalysisStatus.NOT_ELIGIBLE: "NOT_ELIGIBLE",
    AnalysisStatus.FAILED: "FAILED",
}
_POPULATION_CODE = {"in_scope": "IN_SCOPE", "outside": "OUTSIDE", "unknown": "UNKNOWN"}
_NO_UNITS = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
_ENGLISH = CodedConcept(
    value="en-US", scheme_designator="RFC5646", meaning="English (United States)"
)
_SOURCE_IMAGE_PURPOSE = CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
_CHEST_XRAY = CodedConcept(
    value="399208008", scheme_designator="SCT", meaning="Plain X-ray of chest"
)


# --------------------------------------------------------------------------- helpers


def _lo(text: str) -> str:
    """A value that fits VR LO (64 characters, no backslash)."""
    return text.replace("\\", "/")[:64]


def _lo_text(text: str) -> str:
    """A value that fits VR ST (1024 characters)."""
    return text[:1024]


def _require_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise ResultObjectError(f"the source data set has no {keyword}")
    return value


def _check_study(source: Dataset, uids: ResultUids) -> None:
    study = _require_uid(source, "StudyInstanceUID")
    if study != uids.study_instance_uid:
        raise ResultObjectError(
            f"the UIDs were derived for study {uids.study_instance_uid}, "
            f"but the source belongs to study {study}"
        )


def _reference_header(source: Dataset) -> Dataset:
    """The source's identifying UIDs plus empty patient/study values, as highdicom wants
    them for construction; the real values are copied verbatim afterwards
    (:func:`_copy_patient_and_study`), so highdicom's checks never rewrite or reject them."""
    header = Dataset()
    header.StudyInstanceUID = _require_uid(source, "StudyInstanceUID")
    header.SeriesInstanceUID = _require_uid(source, "SeriesInstanceUID")
    header.SOPClassUID = _require_uid(source, "SOPClassUID")
    header.SOPInstanceUID = _require_uid(source, "SOPInstanceUID")
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        setattr(header, keyword, None)
    return header


def _copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    for keyword in COPIED_ATTRIBUTES:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])


def _image_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = _require_uid(source, "SOPClassUID")
    item.ReferencedSOPInstanceUID = _require_uid(source, "SOPInstanceUID")
    return item


# --------------------------------------------------------------------------- Secondary Capture


def build_secondary_capture(
    source: Dataset,
    picture: npt.NDArray[np.generic],
    result: ResultSummary,
    uids: ResultUids,
    *,
    max_side: int = SC_MAX_SIDE,
) -> hd.sc.SCImage:
    """The heatmap Secondary Capture of one result version (see the module docstring).

    ``source`` is the scored instance (its header is enough); ``picture`` the heatmap
    overlay (:func:`cxr_results.render.overlay_at_source_resolution`, or the stored overlay
    itself from :func:`cxr_results.render.overlay_from_png` when the radiograph cannot be
    decoded again) or, without one, its decoded pixels (float [0, 1], MONOCHROME2, as
    :func:`cxr_imaging.decode_dataset` gives them)."""
    if result.status is not AnalysisStatus.SCORED:
        raise ResultObjectError("a Secondary Capture is made only for a scored study")
    _check_study(source, uids)
    neutral = has_burned_in_annotation(source)
    rgb = render_result_image(picture, result, neutral_field=neutral, max_side=max_side)
    header = _reference_header(source)
    try:
        sc = hd.sc.SCImage(
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=header.StudyInstanceUID,
            series_instance_uid=uids.sc_series_instance_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=uids.sc_sop_instance_uid,
            instance_number=uids.instance_number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"),  # placeholder, emptied below
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=_lo(
                f"{SERIES_DESCRIPTION_PREFIX} heatmap {result.model_name} {result.model_version}"
            ),
            manufacturer_model_name=_lo(result.model_name),
            software_versions=_lo(result.model_version),
        )
    except (ValueError, TypeError) as exc:
        raise ResultObjectError(f"cannot build the Secondary Capture: {exc}") from exc
    _copy_patient_and_study(source, sc)
    # Type 2: unknown for a composite picture with bands of text; never guessed.
    sc.add_new(PATIENT_ORIENTATION, "CS", None)
    # Type 2C (General Series): a chest is not a paired structure; empty, never guessed,
    # unless the source states one.
    if "Laterality" in source:
        sc.Laterality = copy.deepcopy(source.Laterality).value
    else:
        sc.add_new(LATERALITY, "CS", None)
    sc.ConversionType = "WSD"  # made on a workstation
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    rows = int(rgb.shape[0])
    shown = (
        "a neutral grey field (the source may carry burned-in text)"
        if neutral
        else "the scored image"
    )
    what = (
        f"Heatmap of model {result.model_name} {result.model_version} over {shown}"
        if np.asarray(picture).ndim == 3
        else f"{shown[0].upper()}{shown[1:]} without heatmap, model {result.model_name} "
        f"{result.model_version}"
    )
    what += f", {rgb.shape[1]} x {rows} px with text bands"
    statement = population_statement(result)
    scored = (
        f"score {result.score:.3f}, threshold {result.threshold:.3f}"
        if statement is None
        else f"{statement}; shadow score {result.score:.3f}, threshold {result.threshold:.3f}"
    )
    sc.DerivationDescription = _lo_text(font_safe(f"{what}; {scored}. {NOT_FOR_DIAGNOSTIC_USE}."))
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. {DISCLAIMER}"
    if str(source.get("LossyImageCompression", "")) == "01" or _lossy_syntax(source):
        sc.LossyImageCompression = "01"
    reference = _image_reference(source)
    source_item = copy.deepcopy(reference)
    source_item.PurposeOfReferenceCodeSequence = [_SOURCE_IMAGE_PURPOSE]
    sc.SourceImageSequence = [source_item]
    sc.ReferencedImageSequence = [reference]
    logger.debug(
        "built Secondary Capture %s (study %s, version %d)",
        uids.sc_sop_instance_uid,
        uids.study_instance_uid,
        uids.result_version,
    )
    return sc


_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203",
}


def _lossy_syntax(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(syntax or "") in _LOSSY_SYNTAXES


# --------------------------------------------------------------------------- SR (TID 1500)


@dataclass(frozen=True)
class AnalysedImage:
    """One more analysed image of the study for the SR (besides the one the SC shows):
    its header and what the model said about it."""

    source: Dataset
    result: ResultSummary


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name, value=value[:1000], relationship_type=RelationshipTypeValues.CONTAINS
    )


def _algorithm(
    model_name: str,
    model_version: str,
    parameters: Sequence[str] = (),
) -> AlgorithmIdentification:
    """TID 4019: name, version, parameters."""
    return AlgorithmIdentification(
        name=_lo(model_name),
        version=_lo(model_version),
        parameters=[p[:1000] for p in parameters] or None,
    )


def _parameters(result: ResultSummary) -> list[str]:
    params = [f"operating threshold {round(float(result.threshold), 6)}"]
    if result.calibration_version:
        params.append(f"calibration {result.calibration_version}")
    if result.weights_sha256:
        params.append(f"weights sha256 {result.weights_sha256}")
    return params


def _device(uids: ResultUids, model_name: str | None) -> ObservationContext:
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=CodedConcept.from_code(codes.DCM.Device),
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=uids.device_uid,
                name=MANUFACTURER,
                manufacturer_name=MANUFACTURER,
                model_name=_lo(model_name) if model_name else None,
            ),
        )
    )


def _finding_code(finding: ModelFinding) -> CodedConcept:
    return CodedConcept(
        value=finding.code_value,
        scheme_designator=finding.code_scheme,
        meaning=finding.code_meaning,
    )


def _tracking(uids: ResultUids, header: Dataset, label: str, number: int) -> TrackingIdentifier:
    return TrackingIdentifier(
        uid=uids.tracking_uid(header.SOPInstanceUID),
        identifier=_lo(f"{label} image {number}"),
    )


def _image_item(name: CodedConcept, ref: Dataset) -> ImageContentItem:
    return ImageContentItem(
        name=name,
        referenced_sop_class_uid=ref.SOPClassUID,
        referenced_sop_instance_uid=ref.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


def _num(code: str, value: float) -> Measurement:
    """A TID 300 measurement without units (the group names the algorithm once)."""
    return Measurement(name=_cxr(code), value=round(float(value), 6), unit=_NO_UNITS)


def _scored_group(
    header: Dataset,
    result: ResultSummary,
    uids: ResultUids,
    number: int,
    illustrations: Sequence[tuple[CodedConcept, Dataset]] = (),
) -> MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: what the model said about one analysed image."""
    statement = population_statement(result)
    algorithm = _algorithm(result.model_name, result.model_version, _parameters(result))
    measurements = [_num("SCORE" if statement is None else "SHADOW_SCORE", result.score)]
    if result.score_interval is not None:
        measurements += [
            _num(code, v)
            for code, v in zip(("SCORE_LOWER", "SCORE_UPPER"), result.score_interval, strict=True)
        ]
    measurements.append(_num("THRESHOLD", result.threshold))
    evaluations = [
        QualitativeEvaluation(
            name=_cxr("STATUS"), value=_cxr("SCORED" if statement is None else "SHADOW")
        )
    ]
    if statement is None:  # a shadow score set no priority: it has no flag to report
        evaluations.append(
            QualitativeEvaluation(
                name=_cxr("FLAG"),
                value=CodedConcept.from_code(codes.SCT.Yes if result.flagged else codes.SCT.No),
            )
        )
    population = _POPULATION_CODE.get(result.population or "")
    if population is not None:
        evaluations.append(
            QualitativeEvaluation(name=_cxr("POPULATION_STATUS"), value=_cxr(population))
        )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(uids, header, result.finding.display, number),
        finding_type=_finding_code(result.finding),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(header)],
    )
    extra: list[TextContentItem | ImageContentItem] = [
        _text(CodedConcept.from_code(codes.DCM.Comment), DISCLAIMER)
    ]
    if statement is not None:
        extra.append(_text(_cxr("POPULATION_STATEMENT"), statement))
    if result.population_note:
        extra.append(_text(_cxr("POPULATION"), result.population_note))
    extra += [_image_item(name, ref) for name, ref in illustrations]
    group[0].ContentSequence.extend(extra)
    return group


def _coding_schemes() -> list[CodingSchemeIdentificationItem]:
    return [
        CodingSchemeIdentificationItem(
            designator=CODING_SCHEME,
            name="cxr-triage local codes",
            responsible_organization=MANUFACTURER,
        )
    ]


def _predecessors(uids: ResultUids, supersedes_version: int | None) -> list[Dataset] | None:
    """The SR of ``supersedes_version``: same series, UID derived like ours."""
    if supersedes_version is None:
        return None
    if not 1 <= supersedes_version < uids.result_version:
        raise ResultObjectError(
            f"result version {uids.result_version} cannot supersede version {supersedes_version}"
        )
    previous = Dataset()
    previous.StudyInstanceUID = uids.study_instance_uid
    previous.SeriesInstanceUID = uids.sr_series_instance_uid
    previous.SOPClassUID = Comprehensive3DSRStorage
    previous.SOPInstanceUID = result_uids(
        uids.root, uids.study_instance_uid, supersedes_version
    ).sr_sop_instance_uid
    return [previous]


def _make_sr(
    evidence: Sequence[Dataset],
    groups: Sequence[MeasurementsAndQualitativeEvaluations],
    uids: ResultUids,
    source: Dataset,
    model_name: str | None,
    series_description: str,
    supersedes_version: int | None,
) -> Comprehensive3DSR:
    try:
        report = MeasurementReport(
            observation_context=_device(uids, model_name),
            procedure_reported=_CHEST_XRAY,
            imaging_measurements=groups,
            title=codes.cid7021.ImagingMeasurementReport,
            language_of_content_item_and_descendants=LanguageOfContentItemAndDescendants(
                language=_ENGLISH
            ),
        )
        sr = Comprehensive3DSR(
            evidence=evidence,
            content=report[0],
            series_instance_uid=uids.sr_series_instance_uid,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=uids.sr_sop_instance_uid,
            instance_number=uids.instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=True,
            is_verified=False,
            previous_versions=_predecessors(uids, supersedes_version),
            series_description=_lo(series_description),
            coding_schemes=_coding_schemes(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultObjectError(f"cannot build the Structured Report: {exc}") from exc
    _copy_patient_and_study(source, sr)
    return sr


def _library_header(ds: Dataset) -> Dataset:
    """What the SR's evidence and Image Library need of a referenced image."""
    header = _reference_header(ds)
    for keyword in ("Modality", "Rows", "Columns", "ImageType", "PatientOrientation"):
        if keyword in ds:
            header[keyword] = copy.deepcopy(ds[keyword])
    return header


def build_structured_report(
    source: Dataset,
    result: ResultSummary,
    uids: ResultUids,
    secondary_capture: Dataset | None = None,
    *,
    segmentation: Dataset | None = None,
    others: Sequence[AnalysedImage] = (),
    supersedes_version: int | None = None,
) -> Comprehensive3DSR:
    """The TID 1500 report of one scored result version (tree in the module docstring).

    One measurement group for ``source`` (the image the SC shows; it references
    ``secondary_capture`` and ``segmentation`` when given) and one for each of ``others``
    (further analysed images of the study)."""
    if result.status is not AnalysisStatus.SCORED:
        raise ResultObjectError(
            "a scored report needs a scored result; use build_not_analysed_report"
        )
    _check_study(source, uids)
    header = _library_header(source)
    evidence: list[Dataset] = [header]
    illustrations: list[tuple[CodedConcept, Dataset]] = []
    for name, obj, what in (
        (CodedConcept.from_code(codes.DCM.BestIllustrationOfFinding), secondary_capture, "SC"),
        (_cxr("HEATMAP"), segmentation, "heatmap"),
    ):
        if obj is None:
            continue
        ref = _library_header(obj)
        if ref.StudyInstanceUID != header.StudyInstanceUID:
            raise ResultObjectError(f"the {what} object belongs to another study")
        evidence.append(ref)
        illustrations.append((name, ref))
    groups = [_scored_group(header, result, uids, 1, illustrations)]
    seen = {header.SOPInstanceUID}
    for other in others:
        _check_study(other.source, uids)
        other_header = _library_header(other.source)
        if other_header.SOPInstanceUID in seen:
            continue
        seen.add(other_header.SOPInstanceUID)
        evidence.append(other_header)
        groups.append(_scored_group(other_header, other.result, uids, len(groups) + 1))
    return _make_sr(
        evidence,
        groups,
        uids,
        source,
        result.model_name,
        f"{SERIES_DESCRIPTION_PREFIX} result {result.model_name} {result.model_version}",
        supersedes_version,
    )


def build_not_analysed_report(
    sources: Sequence[Dataset],
    status: AnalysisStatus,
    reason: str,
    uids: ResultUids,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    finding: ModelFinding | None = None,
    supersedes_version: int | None = None,
) -> Comprehensive3DSR:
    """The TID 1500 report of a study that was seen but not analysed (``NOT_ELIGIBLE`` or
    ``FAILED``): one group per instance of ``sources`` (headers suffice) with the status,
    the reason and the clinical-support statement. ``reason`` must not hold patient data
    (eligibility and error reasons do not)."""
    if status is AnalysisStatus.SCORED:
        raise ResultObjectError("a scored study gets build_structured_report")
    if not sources:
        raise ResultObjectError("a not-analysed report needs at least one source instance")
    if not reason.strip():
        raise ResultObjectError("a not-analysed report needs a reason")
    for source in sources:
        _check_study(source, uids)
    algorithm = _algorithm(model_name, model_version) if model_name and model_version else None
    label = finding.display if finding is not None else "chest radiograph"
    evidence: list[Dataset] = []
    groups: list[MeasurementsAndQualitativeEvaluations] = []
    for source in sources:
        header = _library_header(source)
        if any(e.SOPInstanceUID == header.SOPInstanceUID for e in evidence):
            continue
        evidence.append(header)
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(uids, header, label, len(groups) + 1),
            finding_type=_finding_code(finding) if finding is not None else None,
            algorithm_id=algorithm,
            qualitative_evaluations=[
                QualitativeEvaluation(name=_cxr("STATUS"), value=_cxr(_STATUS_CODE[status]))
            ],
            source_images=[SourceImageForMeasurementGroup.from_source_image(header)],
        )
        group[0].ContentSequence.extend(
            [
                _text(CodedConcept.from_code(codes.DCM.Comment), DISCLAIMER),
                _text(_cxr("REASON"), reason.strip()),
            ]
        )
        groups.append(group)
    kind = "not eligible" if status is AnalysisStatus.NOT_ELIGIBLE else "failed"
    return _make_sr(
        evidence,
        groups,
        uids,
        sources[0],
        model_name,
        f"{SERIES_DESCRIPTION_PREFIX} not analysed ({kind})",
        supersedes_version,
    )
