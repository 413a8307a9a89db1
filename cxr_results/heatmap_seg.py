"""The heatmap as data: a FRACTIONAL Segmentation a viewer can overlay on the radiograph.

Why a Segmentation and not a Parametric Map
    The Parametric Map IOD (PS3.3 A.75) makes the Frame of Reference module mandatory,
    and with it the Plane Position (Patient) and Plane Orientation (Patient) functional
    groups. A projection radiograph (CR, DX, or a Secondary Capture of one) has no Frame
    of Reference and no patient coordinates, so a Parametric Map of it either fails
    dciodvfy or has to invent a patient coordinate system the image never had. Tried:
    highdicom 0.28.2 cannot finish building one (its own read-back raises "Unexpected
    mismatch between dimension index values ...": with no plane positions it writes an
    empty Dimension Index Values); the object it writes before that check fails dciodvfy
    with FrameOfReferenceUID (type 1) and the Pixel Measures, Plane Position and Plane
    Orientation functional groups missing. The Segmentation IOD needs the Frame of Reference only
    when the source images have one: derived from a projection image it is placed by the
    Derivation Image functional group (Source Image Sequence, Spatial Locations Preserved
    YES) at the source's own Rows x Columns, which is exactly how a viewer lays a
    projection overlay over its image. So the heatmap goes as a FRACTIONAL Segmentation
    (8-bit, Maximum Fractional Value 255, Segmentation Fractional Type PROBABILITY),
    built with highdicom; the one attribute it leaves out for a source without a Frame of
    Reference, Patient Orientation (General Image, type 2C), is copied from the source
    (empty when the source has none, as type 2 allows).

What the values are
    Fractional value ``v / 255`` is the heatmap exactly as the Secondary Capture and the
    worker's overlay show it: the Grad-CAM map of the model's finding, min-max normalised
    per image, times the strength the calibrated score allows (1 for a flagged study, at
    most 0.7 for an unflagged one: :func:`cxr_model.heatmaps.heatmap_strength`). It is
    read back from the overlay PNG stored with the prediction, the only copy of the map
    (:func:`cxr_imaging.overlay.heat_from_overlay`, exact to 1/255 above about 2/255), and
    scaled bilinearly to the source's Rows x Columns. It is a relative saliency, **not a
    probability of disease at that pixel and not an outline of a lesion**: the segment's
    property type is the local code 99CXR SALIENCY, never the finding itself, and
    ContentDescription and the segment's description say so.

UIDs and superseding follow :mod:`cxr_results.uids`: one series per study (number 9903),
a new SOP Instance UID per result version (``InstanceNumber`` = version), derived so a
resend overwrites instead of duplicating.
"""

from __future__ import annotations

import copy
import logging

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from cxr_common.clinical import DISCLAIMER
from cxr_results.errors import ResultObjectError
from cxr_results.objects import (
    CODING_SCHEME,
    CXR_CODES,
    NOT_FOR_DIAGNOSTIC_USE,
    _check_study,
    _coding_schemes,
    _copy_patient_and_study,
    _lo,
    _reference_header,
)
from cxr_results.summary import AnalysisStatus, ResultSummary
from cxr_results.uids import MANUFACTURER, SERIES_DESCRIPTION_PREFIX, ResultUids

__all__ = ["SEG_SERIES_NUMBER", "build_heatmap_segmentation"]

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9903
PATIENT_ORIENTATION = 0x00200020
MAX_FRACTIONAL_VALUE = 255


def _cxr(value: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=CXR_CODES[value])


def _at_source_size(
    heat: npt.NDArray[np.generic], rows: int, columns: int
) -> npt.NDArray[np.float32]:
    array = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    if array.ndim != 2 or not array.size:
        raise ResultObjectError(f"expected a 2-D heatmap, got shape {array.shape}")
    if array.shape != (rows, columns):
        image = Image.fromarray(array, mode="F").resize((columns, rows), Image.Resampling.BILINEAR)
        array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return array


def build_heatmap_segmentation(
    source: Dataset,
    heat: npt.NDArray[np.generic],
    result: ResultSummary,
    uids: ResultUids,
) -> hd.seg.Segmentation:
    """The FRACTIONAL Segmentation of ``heat`` (2-D in [0, 1], any size; see the module
    docstring) over the scored instance ``source`` (its header is enough)."""
    if result.status is not AnalysisStatus.SCORED:
        raise ResultObjectError("a heatmap is made only for a scored study")
    _check_study(source, uids)
    try:
        rows, columns = int(source.Rows), int(source.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ResultObjectError("the source data set has no Rows/Columns") from exc
    pixels = _at_source_size(heat, rows, columns)
    header = _reference_header(source)
    header.Rows, header.Columns = rows, columns
    # No pixel spacing is passed on: the map is placed on its image by the Derivation Image
    # functional group (same Rows x Columns), and a Pixel Measures group without a slice
    # thickness is one highdicom cannot read back.
    for keyword in ("PatientOrientation", "Modality"):
        if keyword in source:
            header[keyword] = copy.deepcopy(source[keyword])
    finding = result.finding.display
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=_lo(f"{finding} heatmap (Grad-CAM)"),
        segmented_property_category=_cxr("HEATMAP"),
        segmented_property_type=_cxr("SALIENCY"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_lo(result.model_name),
            version=_lo(result.model_version),
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    segment.SegmentDescription = _lo(f"Saliency for {finding}, not a lesion outline")
    try:
        seg = hd.seg.Segmentation(
            source_images=[header],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[segment],
            series_instance_uid=uids.seg_series_instance_uid,
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=uids.seg_sop_instance_uid,
            instance_number=uids.instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=_lo(result.model_name),
            software_versions=_lo(result.model_version),
            device_serial_number=uids.device_uid[-16:],
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            content_description=_lo(f"Heatmap as data; {NOT_FOR_DIAGNOSTIC_USE}"),
            content_label="HEATMAP",
            series_description=_lo(
                f"{SERIES_DESCRIPTION_PREFIX} heatmap data {result.model_name} "
                f"{result.model_version}"
            ),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError) as exc:
        raise ResultObjectError(f"cannot build the heatmap Segmentation: {exc}") from exc
    _copy_patient_and_study(source, seg)
    if PATIENT_ORIENTATION not in seg:
        if "PatientOrientation" in source:
            seg.PatientOrientation = copy.deepcopy(source.PatientOrientation)
        else:
            seg.add_new(PATIENT_ORIENTATION, "CS", None)  # type 2: unknown, never guessed
    seg.CodingSchemeIdentificationSequence = list[Dataset](_coding_schemes())
    seg.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. {DISCLAIMER}"
    logger.debug(
        "built heatmap Segmentation %s (study %s, version %d)",
        uids.seg_sop_instance_uid,
        uids.study_instance_uid,
        uids.result_version,
    )
    return seg
