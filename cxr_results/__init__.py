"""Results back to PACS: the DICOM objects cxr-triage creates and the C-STORE sender.

* :mod:`cxr_results.destinations`: ``CXR_RESULT_DESTINATIONS`` parsed into destinations.
* :mod:`cxr_results.uids`: our UID root, stable UIDs per result version, recognising
  our own objects when a PACS forwards them back.
* :mod:`cxr_results.objects`: the heatmap Secondary Capture and the TID 1500
  Comprehensive 3D SR (also for studies that were seen but not analysed), built with
  highdicom; :mod:`cxr_results.heatmap_seg`: the heatmap as a FRACTIONAL Segmentation.
* :mod:`cxr_results.send`: the project's one C-STORE client (pynetdicom): these objects
  to PACS, and files to a listener for ``cxr-triage send``.
* :mod:`cxr_results.stow`: the STOW-RS client (httpx): the same objects to a DICOMweb
  destination, with the same per-object outcomes.

Pure: no database, queue or model code (it imports only :mod:`cxr_common` and
:mod:`cxr_imaging` of the project), so the worker and the listener can both use it.
"""

from cxr_results.destinations import (
    ALL_OBJECTS,
    AnyDestination,
    Destination,
    DicomwebDestination,
    ResultObject,
    parse_destination,
    parse_destinations,
)
from cxr_results.errors import (
    AssociationError,
    DestinationConfigError,
    ResultObjectError,
    ResultsError,
    UidRootError,
)
from cxr_results.heatmap_seg import build_heatmap_segmentation
from cxr_results.objects import (
    AnalysedImage,
    AnalysisStatus,
    ResultSummary,
    build_not_analysed_report,
    build_secondary_capture,
    build_structured_report,
    overlay_from_png,
)
from cxr_results.render import overlay_at_source_resolution
from cxr_results.send import (
    SendOutcome,
    StoreItem,
    StoreOutcome,
    Timeouts,
    client_tls_context,
    is_stored,
    send_objects,
    store,
)
from cxr_results.uids import (
    ResultUids,
    derive_uid,
    generate_uid_root,
    is_our_dataset,
    is_our_uid,
    load_or_create_uid_root,
    result_uids,
    validate_uid_root,
)

__all__ = [
    "ALL_OBJECTS",
    "AnalysedImage",
    "AnalysisStatus",
    "AnyDestination",
    "DicomwebDestination",
    "AssociationError",
    "Destination",
    "DestinationConfigError",
    "ResultObject",
    "ResultObjectError",
    "ResultSummary",
    "ResultUids",
    "ResultsError",
    "SendOutcome",
    "StoreItem",
    "StoreOutcome",
    "Timeouts",
    "client_tls_context",
    "UidRootError",
    "build_heatmap_segmentation",
    "build_not_analysed_report",
    "build_secondary_capture",
    "build_structured_report",
    "derive_uid",
    "generate_uid_root",
    "is_our_dataset",
    "is_stored",
    "is_our_uid",
    "load_or_create_uid_root",
    "overlay_at_source_resolution",
    "overlay_from_png",
    "parse_destination",
    "parse_destinations",
    "result_uids",
    "send_objects",
    "store",
    "validate_uid_root",
]
