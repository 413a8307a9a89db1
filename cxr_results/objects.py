"""The DICOM objects cxr-triage files into the study it scored.

For each result version of a study (see :mod:`cxr_results.uids`):

* a **Secondary Capture** image (:func:`build_secondary_capture`, highdicom ``SCImage``,
  RGB, Explicit VR Little Endian): the heatmap overlay the worker stored for the scored
  instance (:mod:`cxr_model.heatmaps` draws it: one heatmap rule, no second model run),
  with a dark band above it with "NOT FOR DIAGNOSTIC USE", the score, the threshold, the
  flag and the model, and a band below with the clinical-support statement. The text
  never holds patient data. When the source says its pixels carry burned-in annotation
  (``BurnedInAnnotation YES``) the overlay was drawn on a neutral grey field, and without
  an overlay the radiograph is replaced by grey here (the product's privacy rule; the text
  burned into the source may name the patient). The picture is drawn by
  :mod:`cxr_results.render`.
* a **Comprehensive SR** (:func:`build_structured_report`) with the score, threshold, flag,
  analysis status, model name/version/sha256 and calibration version, referencing the
  scored instance and the Secondary Capture, led by the clinical-support statement.
* for a study that was seen but not analysed (not eligible, or failed), a short
  Comprehensive SR (:func:`build_not_analysed_report`) that says so and why.

Patient and study attributes are copied verbatim from the source (PatientName, PatientID,
IssuerOfPatientID, PatientBirthDate, PatientSex, StudyInstanceUID, StudyDate, StudyTime,
AccessionNumber, ReferringPhysicianName, StudyID, SpecificCharacterSet) so the PACS files
the objects with the original; nothing else about the patient is copied.

Superseding rule
    A result version ``n`` (1, 2, ...) reuses the study's two result series (same
    SeriesInstanceUID for every version), gets new SOP Instance UIDs and
    ``InstanceNumber = n``, so the newest result sorts last in each series and the older
    ones stay for audit. The SR of version ``n`` may also list the SR of the version it
    replaces in PredecessorDocumentsSequence (``supersedes_version``; pass the version
    whose SR was actually sent). Rebuilding the same version gives the same UIDs.

SR content tree (value type, relationship, concept)::

    CONTAINER  LN 18748-4 "Diagnostic Imaging Report" (SEPARATE)
      HAS CONCEPT MOD  CODE  DCM 121049 Language = RFC5646 en-US
      HAS OBS CONTEXT  DCM 121005 Observer Type = DCM 121007 Device, DCM 121012 Device
                       Observer UID, 121013 Name, 121014 Manufacturer, 121015 Model Name
      CONTAINS  TEXT   DCM 121106 "Comment" = the clinical-support statement
      CONTAINS  CODE   99CXR STATUS "Analysis status" = 99CXR SCORED | NOT_ELIGIBLE | FAILED
      CONTAINS  TEXT   99CXR REASON "Reason not analysed"         (not-analysed SR only)
      CONTAINS  NUM    99CXR SCORE "Triage score" (UCUM "1")        (scored SR, triaged)
      CONTAINS  NUM    99CXR SHADOW_SCORE "Shadow score, not used for triage" (instead of
                       SCORE when the instance is outside the validated population)
      CONTAINS  NUM    99CXR SCORE_LOWER "Score interval, lower end" (UCUM "1")
      CONTAINS  NUM    99CXR SCORE_UPPER "Score interval, upper end" (UCUM "1")
                       (when the score has an interval: 95%, from the calibration sample)
      CONTAINS  NUM    99CXR THRESHOLD "Operating threshold" (UCUM "1")
      CONTAINS  CODE   99CXR FLAG "Flagged for priority reading" = SCT 373066001 Yes | 373067005 No
                       (only for a score that triaged: a shadow score has no flag)
      CONTAINS  CODE   99CXR POPULATION_STATUS "Validated population" = 99CXR IN_SCOPE |
                       OUTSIDE | UNKNOWN                                (when checked)
      CONTAINS  TEXT   99CXR POPULATION_STATEMENT "Population statement" = "OUTSIDE
                       VALIDATED POPULATION: score not used for triage (reason)"  (shadow only)
      CONTAINS  CODE   99CXR FINDING "Finding scored" = the model's finding as its
                       model.json codes it (e.g. SCT 233604007 "Pneumonia")
      CONTAINS  TEXT   DCM 111001 Algorithm Name, DCM 111003 Algorithm Version
      CONTAINS  TEXT   99CXR WEIGHTS_SHA256 "Model weights SHA-256"
      CONTAINS  TEXT   99CXR CALIBRATION "Calibration version"
      CONTAINS  TEXT   99CXR POPULATION "Population note"           (when given)
      CONTAINS  IMAGE  DCM 121112 "Source of Measurement" -> the scored instance
      CONTAINS  IMAGE  99CXR SEEN "Instance seen, not analysed" -> each instance (not-analysed SR)
      CONTAINS  IMAGE  DCM 121080 "Best illustration of finding" -> the Secondary Capture

``99CXR`` is our private coding scheme (PS3.3 8.2: designators starting "99" are local);
it is declared in each SR's CodingSchemeIdentificationSequence, and its codes are listed
in :data:`CXR_CODES`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian

from cxr_common.clinical import DISCLAIMER
from cxr_results.errors import ResultObjectError
from cxr_results.render import NOT_FOR_DIAGNOSTIC_USE, overlay_from_png, render_result_image
from cxr_results.summary import AnalysisStatus, ResultSummary, population_statement
from cxr_results.uids import MANUFACTURER, SERIES_DESCRIPTION_PREFIX, ResultUids, result_uids

__all__ = [
    "CODING_SCHEME",
    "CXR_CODES",
    "NOT_FOR_DIAGNOSTIC_USE",
    "SC_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
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


# --------------------------------------------------------------------------- helpers


def _lo(text: str) -> str:
    """A value that fits VR LO (64 characters, no backslash)."""
    return text.replace("\\", "/")[:64]


def _lo_text(text: str) -> str:
    """A value that fits VR ST (1024 characters)."""
    return text[:1024]


def _burned_in(ds: Dataset) -> bool:
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


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
    max_side: int = 1024,
) -> hd.sc.SCImage:
    """The heatmap Secondary Capture of one result version (see the module docstring).

    ``source`` is the scored instance (its header is enough); ``picture`` the heatmap
    overlay stored for it (:func:`cxr_results.render.overlay_from_png`) or, without one,
    its decoded pixels (float [0, 1], MONOCHROME2, as :func:`cxr_imaging.decode_dataset`
    gives them)."""
    if result.status is not AnalysisStatus.SCORED:
        raise ResultObjectError("a Secondary Capture is made only for a scored study")
    _check_study(source, uids)
    neutral = _burned_in(source)
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
    sc.ConversionType = "WSD"  # made on a workstation
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    shown = "a neutral grey field" if neutral else "the scored image"
    what = (
        f"Heatmap of model {result.model_name} {result.model_version} over {shown}"
        if np.asarray(picture).ndim == 3
        else f"{shown.capitalize()} without heatmap, model {result.model_name} "
        f"{result.model_version}"
    )
    statement = population_statement(result)
    scored = (
        f"score {result.score:.3f}, threshold {result.threshold:.3f}"
        if statement is None
        else f"{statement}; shadow score {result.score:.3f}, threshold {result.threshold:.3f}"
    )
    sc.DerivationDescription = _lo_text(f"{what}; {scored}. {NOT_FOR_DIAGNOSTIC_USE}.")
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


# --------------------------------------------------------------------------- SR


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name, value=value[:1000], relationship_type=RelationshipTypeValues.CONTAINS
    )


def _model_items(
    model_name: str, model_version: str, weights_sha256: str | None, calibration: str | None
) -> list[TextContentItem]:
    items = [
        _text(CodedConcept.from_code(codes.DCM.AlgorithmName), model_name),
        _text(CodedConcept.from_code(codes.DCM.AlgorithmVersion), model_version),
    ]
    if weights_sha256:
        items.append(_text(_cxr("WEIGHTS_SHA256"), weights_sha256))
    if calibration:
        items.append(_text(_cxr("CALIBRATION"), calibration))
    return items


def _report(items: Sequence[ContentItem]) -> ContainerContentItem:
    """The document's root container holding ``items``."""
    root = ContainerContentItem(
        name=CodedConcept.from_code(codes.LN.DiagnosticImagingReport),
        is_content_continuous=False,
    )
    root.ContentSequence = ContentSequence(items)
    return root


def _common_items(
    uids: ResultUids, model_name: str | None, status: AnalysisStatus
) -> list[ContentItem]:
    """Language, observer (our device), the clinical-support statement, the status."""
    device = ObserverContext(
        observer_type=CodedConcept.from_code(codes.DCM.Device),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=_lo(model_name) if model_name else None,
        ),
    )
    return [
        *LanguageOfContentItemAndDescendants(language=_ENGLISH),
        *ObservationContext(observer_device_context=device),
        _text(CodedConcept.from_code(codes.DCM.Comment), DISCLAIMER),
        CodeContentItem(
            name=_cxr("STATUS"),
            value=_cxr(_STATUS_CODE[status]),
            relationship_type=RelationshipTypeValues.CONTAINS,
        ),
    ]


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
    previous.SOPClassUID = ComprehensiveSRStorage
    previous.SOPInstanceUID = result_uids(
        uids.root, uids.study_instance_uid, supersedes_version
    ).sr_sop_instance_uid
    return [previous]


def _make_sr(
    evidence: Sequence[Dataset],
    content: ContainerContentItem,
    uids: ResultUids,
    source: Dataset,
    series_description: str,
    supersedes_version: int | None,
) -> ComprehensiveSR:
    try:
        sr = ComprehensiveSR(
            evidence=evidence,
            content=content,
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
    except (ValueError, TypeError) as exc:
        raise ResultObjectError(f"cannot build the Structured Report: {exc}") from exc
    _copy_patient_and_study(source, sr)
    return sr


def build_structured_report(
    source: Dataset,
    result: ResultSummary,
    uids: ResultUids,
    secondary_capture: Dataset | None = None,
    *,
    supersedes_version: int | None = None,
) -> ComprehensiveSR:
    """The Comprehensive SR of one scored result version (tree in the module docstring).

    It references ``source`` (the scored instance) and, when given, ``secondary_capture``."""
    if result.status is not AnalysisStatus.SCORED:
        raise ResultObjectError(
            "a scored report needs a scored result; use build_not_analysed_report"
        )
    _check_study(source, uids)
    contains = RelationshipTypeValues.CONTAINS
    items = _common_items(uids, result.model_name, AnalysisStatus.SCORED)
    statement = population_statement(result)
    items.append(
        NumContentItem(
            name=_cxr("SCORE" if statement is None else "SHADOW_SCORE"),
            value=round(float(result.score), 6),
            unit=_NO_UNITS,
            relationship_type=contains,
        )
    )
    if result.score_interval is not None:
        items += [
            NumContentItem(
                name=_cxr(code),
                value=round(float(v), 6),
                unit=_NO_UNITS,
                relationship_type=contains,
            )
            for code, v in zip(("SCORE_LOWER", "SCORE_UPPER"), result.score_interval, strict=True)
        ]
    items.append(
        NumContentItem(
            name=_cxr("THRESHOLD"),
            value=round(float(result.threshold), 6),
            unit=_NO_UNITS,
            relationship_type=contains,
        )
    )
    if statement is None:  # a shadow score set no priority: it has no flag to report
        items.append(
            CodeContentItem(
                name=_cxr("FLAG"),
                value=CodedConcept.from_code(codes.SCT.Yes if result.flagged else codes.SCT.No),
                relationship_type=contains,
            )
        )
    finding = result.finding
    items += [
        CodeContentItem(
            name=_cxr("FINDING"),
            value=CodedConcept(
                value=finding.code_value,
                scheme_designator=finding.code_scheme,
                meaning=finding.code_meaning,
            ),
            relationship_type=contains,
        ),
        *_model_items(
            result.model_name,
            result.model_version,
            result.weights_sha256,
            result.calibration_version,
        ),
    ]
    population = _POPULATION_CODE.get(result.population or "")
    if population is not None:
        items.append(
            CodeContentItem(
                name=_cxr("POPULATION_STATUS"),
                value=_cxr(population),
                relationship_type=contains,
            )
        )
    if statement is not None:
        items.append(_text(_cxr("POPULATION_STATEMENT"), statement))
    if result.population_note:
        items.append(_text(_cxr("POPULATION"), result.population_note))
    header = _reference_header(source)
    evidence: list[Dataset] = [header]
    items.append(
        ImageContentItem(
            name=CodedConcept.from_code(codes.DCM.SourceOfMeasurement),
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            relationship_type=contains,
        )
    )
    if secondary_capture is not None:
        sc_header = _reference_header(secondary_capture)
        if sc_header.StudyInstanceUID != header.StudyInstanceUID:
            raise ResultObjectError("the Secondary Capture belongs to another study")
        evidence.append(sc_header)
        items.append(
            ImageContentItem(
                name=CodedConcept.from_code(codes.DCM.BestIllustrationOfFinding),
                referenced_sop_class_uid=sc_header.SOPClassUID,
                referenced_sop_instance_uid=sc_header.SOPInstanceUID,
                relationship_type=contains,
            )
        )
    return _make_sr(
        evidence,
        _report(items),
        uids,
        source,
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
    supersedes_version: int | None = None,
) -> ComprehensiveSR:
    """A short SR saying the study was seen but not analysed (``NOT_ELIGIBLE`` or
    ``FAILED``) and why; it references every instance in ``sources`` (headers suffice).
    ``reason`` must not hold patient data (eligibility and error reasons do not)."""
    if status is AnalysisStatus.SCORED:
        raise ResultObjectError("a scored study gets build_structured_report")
    if not sources:
        raise ResultObjectError("a not-analysed report needs at least one source instance")
    if not reason.strip():
        raise ResultObjectError("a not-analysed report needs a reason")
    for source in sources:
        _check_study(source, uids)
    contains = RelationshipTypeValues.CONTAINS
    items = _common_items(uids, model_name, status)
    items.append(_text(_cxr("REASON"), reason.strip()))
    if model_name and model_version:
        items += _model_items(model_name, model_version, None, None)
    evidence: list[Dataset] = []
    seen: set[str] = set()
    for source in sources:
        header = _reference_header(source)
        if header.SOPInstanceUID in seen:
            continue
        seen.add(header.SOPInstanceUID)
        evidence.append(header)
        items.append(
            ImageContentItem(
                name=_cxr("SEEN"),
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=header.SOPInstanceUID,
                relationship_type=contains,
            )
        )
    label = "not eligible" if status is AnalysisStatus.NOT_ELIGIBLE else "failed"
    return _make_sr(
        evidence,
        _report(items),
        uids,
        sources[0],
        f"{SERIES_DESCRIPTION_PREFIX} not analysed ({label})",
        supersedes_version,
    )
