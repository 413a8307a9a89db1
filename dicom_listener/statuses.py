"""Every DICOM status and association rejection the listener answers with.

Storage statuses follow PS3.4 Annex B.2.3 and the general statuses of PS3.7 Annex C:

* ``0xA7xx`` "Refused: Out of Resources": we could not persist the instance (storage or
  database unavailable). The sender may retry later; nothing was recorded.
* ``0xA9xx`` "Error: Data Set Does Not Match SOP Class".
* ``0xCxxx`` "Error: Cannot Understand": the data set could not be parsed or lacks what
  we need to store it.
* ``0x01xx`` general failures (SOP class not supported, processing failure, a
  duplicate SOP Instance UID with different content).

Refusals by an input limit (``cxr_imaging.limits``) and the duplicate refusal answer a
status ``Dataset`` that also carries Error Comment (0000,0902): a short reason (no
patient data) that the sender shows in its log or queue.
"""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses used by the listener's store handler."""

    #: Stored durably, recorded in Postgres (or already known: a resend).
    SUCCESS = 0x0000
    #: Out of resources, generic: the instance could not be persisted.
    OUT_OF_RESOURCES = 0xA700
    #: Out of resources: the instance could not be written to storage
    #: (storage unreachable, read-only, full). Nothing recorded; the sender may retry.
    OUT_OF_RESOURCES_STORAGE = 0xA701
    #: Out of resources: the database could not record the instance (Postgres down).
    #: The staged file is removed; the sender may retry.
    OUT_OF_RESOURCES_DATABASE = 0xA702
    #: The data set's SOP Class UID (or SOP Instance UID) differs from the one the
    #: C-STORE request and its presentation context announced.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Cannot understand: a required UID (Study, SOP Instance, SOP Class) is missing or
    #: not a valid UID, so the instance cannot be stored or keyed.
    CANNOT_UNDERSTAND = 0xC000
    #: Cannot understand: the data set could not be decoded (not parseable DICOM).
    #: Same value as pynetdicom's storescp for an undecodable data set.
    UNDECODABLE_DATASET = 0xC210
    #: Pixel Data missing, empty, or shorter than Rows x Columns x samples x bits
    #: declare (a truncated transfer): never success, so the modality resends.
    PIXEL_DATA_LENGTH = 0xC220
    #: Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated absurd or over a
    #: decode limit (``CXR_MAX_ROWS`` ...): a pixel decompression bomb is refused here.
    DECLARED_SIZE = 0xC221
    #: A Deflated data set inflates past ``CXR_MAX_INFLATED_BYTES`` (a deflate bomb).
    INFLATED_SIZE = 0xC222
    #: More than ``CXR_MAX_HEADER_BYTES`` before Pixel Data.
    HEADER_SIZE = 0xC223
    #: The instance's patient (Patient ID, Issuer of Patient ID, name, birth date, sex)
    #: differs from the patient its study was first stored for: not stored, the conflict
    #: recorded and shown (worklist, ops page) for a person to resolve.
    PATIENT_CONFLICT = 0xC230
    #: The instance carries cxr-triage's result marker (Manufacturer + SeriesDescription)
    #: but is not one of our objects (not under our UID root, or not a class we create).
    FOREIGN_RESULT_OBJECT = 0xC231
    #: The SOP class is not one the listener stores (e.g. MR): normally refused at
    #: association negotiation already; this is the answer if one gets through.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: An unexpected error in the handler: caught, logged, answered (never raised).
    PROCESSING_FAILURE = 0x0110
    #: The SOP Instance UID is already stored with different content (PS3.7 C.4
    #: "Duplicate SOP Instance", a failure): the stored file, its row and its prediction
    #: stay untouched, the new copy is not stored, the conflict is recorded. A resend of
    #: identical content is SUCCESS (no second job).
    DUPLICATE_SOP_INSTANCE = 0x0111


class EchoStatus(IntEnum):
    """C-ECHO response statuses."""

    #: Verification succeeded: the listener is up and answering.
    SUCCESS = 0x0000
    #: An unexpected error in the echo handler (caught and answered, never raised).
    PROCESSING_FAILURE = 0x0110


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 9.3.4)."""

    #: Rejected permanently: retrying with the same parameters cannot succeed.
    REJECTED_PERMANENT = 0x01
    #: Rejected transiently (e.g. too many associations): retry later.
    REJECTED_TRANSIENT = 0x02


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 9.3.4)."""

    #: DICOM UL service-user: the application (us) rejected it.
    SERVICE_USER = 0x01
    #: DICOM UL service-provider, presentation related (e.g. local limit exceeded).
    SERVICE_PROVIDER_PRESENTATION = 0x03


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. for source ``SERVICE_USER`` (PS3.8 9.3.4)."""

    #: The calling AE title is not on the allow-list (``CXR_ALLOWED_CALLING_AE_TITLES``).
    CALLING_AE_TITLE_NOT_RECOGNISED = 0x03
    #: The called AE title is not ours (unless ``CXR_ACCEPT_ANY_CALLED_AE_TITLE``).
    CALLED_AE_TITLE_NOT_RECOGNISED = 0x07


#: How an association from a calling AE title outside the allow-list is refused:
#: (result, source, reason) = (1, 1, 3), which pynetdicom sends for ``require_calling_aet``.
CALLING_AE_REJECTION = (
    RejectResult.REJECTED_PERMANENT,
    RejectSource.SERVICE_USER,
    RejectReason.CALLING_AE_TITLE_NOT_RECOGNISED,
)


#: How an association that names another called AE title is refused: (1, 1, 7), which
#: pynetdicom sends for ``require_called_aet``.
CALLED_AE_REJECTION = (
    RejectResult.REJECTED_PERMANENT,
    RejectSource.SERVICE_USER,
    RejectReason.CALLED_AE_TITLE_NOT_RECOGNISED,
)
