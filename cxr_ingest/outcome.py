"""What goes into ingest (the source) and what comes out (the outcome), for every transport.

An adapter describes where a file came from (:class:`Source`) and maps the
:class:`Outcome` to its protocol's answer: the C-STORE handler to a DICOM status with an
Error Comment, a STOW-RS route to a PS3.18 response (ReferencedSOPSequence for stored
and duplicate instances, FailedSOPSequence with a FailureReason for refusals). The core
never names a protocol's status: :class:`RefusalCode` says *why*, each adapter says how
its protocol spells it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Transport(StrEnum):
    """How an instance arrived."""

    DICOM = "dicom"  # C-STORE over a DICOM association
    STOW = "stow"  # DICOMweb STOW-RS (PS3.18)


@dataclass(frozen=True)
class Source:
    """Where a received file came from and what its request announced.

    ``identity`` is the calling AE title for DICOM, the client identity (a user or
    client name) for STOW-RS; ``peer_address`` the sender's IP address. The announced
    UIDs are what the request said it carries (C-STORE's Affected SOP Class and Instance
    UIDs; None where the transport announces nothing): a data set that differs is
    refused. None of these is patient data.
    """

    transport: Transport
    identity: str | None = None
    peer_address: str | None = None
    announced_sop_class_uid: str | None = None
    announced_sop_instance_uid: str | None = None
    #: The study the request names (STOW-RS ``/studies/{study}``): an instance of another
    #: study is refused.
    announced_study_instance_uid: str | None = None

    @property
    def calling_ae_title(self) -> str | None:
        """The calling AE title recorded with the instance (DICOM only), at most 16
        printable characters."""
        if self.transport is not Transport.DICOM or self.identity is None:
            return None
        return "".join(ch for ch in self.identity if ch.isprintable()).strip()[:16] or None


class Disposition(StrEnum):
    """What became of a received instance."""

    #: New: the file is in place (fsynced), its row committed; the scoring job enqueued
    #: (or left to the reconciler when the broker failed).
    STORED = "stored"
    #: The SOP Instance UID was already stored with identical content: nothing written,
    #: no second job. A success for the sender.
    DUPLICATE = "duplicate"
    #: One of our own result objects, forwarded back by a PACS: acknowledged as a
    #: success so the PACS stops resending it, and dropped (not stored, not scored).
    OWN_OBJECT = "own_object"
    #: Not stored; :attr:`Outcome.refusal` says why.
    REFUSED = "refused"


class RefusalCode(StrEnum):
    """Why an instance was refused. Each adapter maps every code to its protocol's answer
    (the C-STORE handler: ``dicom_listener.handlers.STATUS_FOR_REFUSAL``)."""

    #: The SOP class is not one we store (e.g. MR, or a Comprehensive SR not ours).
    SOP_CLASS_NOT_STORED = "sop_class_not_stored"
    #: The data set's SOP Class UID differs from the one the request announced.
    SOP_CLASS_MISMATCH = "sop_class_mismatch"
    #: The data set's SOP Instance UID differs from the one the request announced.
    SOP_INSTANCE_MISMATCH = "sop_instance_mismatch"
    #: The data set's Study Instance UID differs from the study the request names.
    STUDY_INSTANCE_MISMATCH = "study_instance_mismatch"
    #: SOP Class, SOP Instance or Study Instance UID missing.
    MISSING_UID = "missing_uid"
    #: A required UID is not a valid UID (it could not become a storage key).
    INVALID_UID = "invalid_uid"
    #: Not parseable DICOM Part 10.
    UNDECODABLE = "undecodable"
    #: Pixel Data missing, empty or truncated.
    PIXEL_DATA_LENGTH = "pixel_data_length"
    #: Declared image size absurd or over a decode limit.
    DECLARED_SIZE = "declared_size"
    #: A Deflated data set inflates past the limit (a deflate bomb).
    INFLATED_SIZE = "inflated_size"
    #: More than the limit before Pixel Data.
    HEADER_SIZE = "header_size"
    #: Another input limit (a limit refusal without a more specific code).
    INPUT_REFUSED = "input_refused"
    #: The SOP Instance UID is already stored with different content: the stored copy
    #: is kept, the conflict recorded, the new copy not stored.
    CONTENT_CONFLICT = "content_conflict"
    #: The instance names a study already stored for another patient (Patient ID, Issuer
    #: of Patient ID, name, birth date or sex differ from the study's first instance):
    #: not stored, the conflict recorded for a person to resolve (``cxr_ingest.identity``).
    PATIENT_CONFLICT = "patient_conflict"
    #: The instance carries our result marker (Manufacturer + SeriesDescription) without
    #: being ours by UID root and SOP class: refused, never silently acknowledged.
    FOREIGN_RESULT_OBJECT = "foreign_result_object"
    #: Storage (staging folder or the volume) unavailable: nothing stored; retry later.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    #: The database could not record the instance: nothing stored; retry later.
    DATABASE_UNAVAILABLE = "database_unavailable"
    #: An unexpected error in ingest (caught, logged by type, answered).
    INTERNAL_ERROR = "internal_error"

    @property
    def retryable(self) -> bool:
        """True when the same object may succeed later unchanged (resources)."""
        return self in (RefusalCode.STORAGE_UNAVAILABLE, RefusalCode.DATABASE_UNAVAILABLE)


@dataclass(frozen=True)
class Outcome:
    """The result of :func:`cxr_ingest.ingest`.

    ``reason`` is the full text for the log and ``comment`` the short one for the
    sender (at most 64 characters fit a DICOM Error Comment); neither holds patient data.
    The UIDs are those of the data set when it could be read (else the announced ones).
    """

    disposition: Disposition
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    instance_id: int | None = None
    refusal: RefusalCode | None = None
    reason: str = ""
    comment: str = ""
    #: STORED only: the scoring job is on the broker (False: the reconciler will send it).
    enqueued: bool = False

    @property
    def success(self) -> bool:
        """True when the sender may consider the instance delivered."""
        return self.disposition is not Disposition.REFUSED


def refused(
    code: RefusalCode,
    reason: str,
    comment: str | None = None,
    *,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    study_instance_uid: str | None = None,
    instance_id: int | None = None,
) -> Outcome:
    """A refusal ``code`` with its log ``reason`` and sender ``comment`` (default: the
    reason)."""
    return Outcome(
        Disposition.REFUSED,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        study_instance_uid=study_instance_uid,
        instance_id=instance_id,
        refusal=code,
        reason=reason,
        comment=comment or reason,
    )
