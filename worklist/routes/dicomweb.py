"""STOW-RS in (PS3.18 10.5): ``POST /dicomweb/studies`` and ``/dicomweb/studies/{study}``.

The DICOMweb adapter of :mod:`cxr_ingest`, as ``dicom_listener.handlers`` is the C-STORE
one: each ``application/dicom`` part of a ``multipart/related`` body goes through
:func:`cxr_ingest.ingest` (limits, same-UID rules, conflicts, durable place, row, scoring
job enqueued after commit), and this module only maps each :class:`~cxr_ingest.Outcome`
to the PS3.18 answer.

Who
    A bearer token of the ``sender`` role (``cxr-triage token create NAME --role
    sender``); any other role gets 403, no token 401. The token's name is the instance's
    source identity (logged; the client's address with a conflict).
Request
    ``Content-Type: multipart/related; type="application/dicom"; boundary=...`` (a
    missing ``type`` is taken as ``application/dicom``; another type, or another media
    type, is 415; no boundary is 400). The body is bounded before it is read
    (``Content-Length`` over ``CXR_WEB_STOW_MAX_BYTES``: 413) and while it is read (the
    same cap, and ``CXR_WEB_STOW_MAX_INSTANCES`` parts); each part is streamed to a temp
    file in the storage's staging folder, never held in memory (:mod:`worklist.multipart`).
    A part in Part 10 format without its 128-byte preamble and 'DICM' (what dicomweb-client
    sends) gets them put in front (:func:`part10_head`).
Response (``application/dicom+json``)
    A data set with ``ReferencedSOPSequence`` (0008,1199): stored, already stored with
    identical content, or one of our own result objects (acknowledged, dropped), and
    ``FailedSOPSequence`` (0008,1198): each refusal with its ``FailureReason`` (0008,1197)
    from :data:`FAILURE_REASON_FOR_REFUSAL`. HTTP 200 when every instance was stored, 202
    when some failed, 409 when none was stored; each failure's reason is also a
    ``Warning: 299`` header (PS3.18 8.3.5.1), UIDs only, never patient data. A part that
    is not ``application/dicom`` fails with 0xC000 and no UIDs. For
    ``/studies/{study}``, an instance of another study fails with 0xC409 (the value
    dcm4chee uses) and is not stored.
"""

from __future__ import annotations

import contextlib
import logging
from enum import IntEnum
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cxr_common.errors import StorageError
from cxr_common.storage import sanitise_uid
from cxr_imaging.limits import (
    STATUS_DECLARED_SIZE,
    STATUS_HEADER_SIZE,
    STATUS_INFLATED_SIZE,
    STATUS_PIXEL_DATA_LENGTH,
)
from cxr_ingest import Ingest, Outcome, Received, RefusalCode, Source, Transport, ingest
from cxr_ingest.outcome import refused
from worklist.auth import Principal, client_addr
from worklist.deps import Sender, State
from worklist.multipart import MultipartError, Part, media_type, read_parts
from worklist.responses import json_error

__all__ = ["FAILURE_REASON_FOR_REFUSAL", "FailureReason", "router", "stow_response"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: Most ``Warning`` headers one response carries (the body lists every failure).
MAX_WARNINGS = 20


class FailureReason(IntEnum):
    """FailureReason (0008,1197) values (PS3.18 Table 10.5.3-3, PS3.4 Annex B.2.3); the
    decode-limit refusals keep the C-STORE statuses the listener answers them with."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_INSTANCE_UID_MISMATCH = 0xC409
    PIXEL_DATA_LENGTH = STATUS_PIXEL_DATA_LENGTH
    DECLARED_SIZE = STATUS_DECLARED_SIZE
    INFLATED_SIZE = STATUS_INFLATED_SIZE
    HEADER_SIZE = STATUS_HEADER_SIZE
    #: The study holds another patient's instances (the listener's 0xC230).
    PATIENT_CONFLICT = 0xC230
    #: Carries our result marker without being ours (the listener's 0xC231).
    FOREIGN_RESULT_OBJECT = 0xC231


#: The FailureReason answering each refusal (every :class:`RefusalCode` has one: a test).
FAILURE_REASON_FOR_REFUSAL: dict[RefusalCode, FailureReason] = {
    RefusalCode.SOP_CLASS_NOT_STORED: FailureReason.SOP_CLASS_NOT_SUPPORTED,
    RefusalCode.SOP_CLASS_MISMATCH: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    RefusalCode.SOP_INSTANCE_MISMATCH: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    RefusalCode.STUDY_INSTANCE_MISMATCH: FailureReason.STUDY_INSTANCE_UID_MISMATCH,
    RefusalCode.MISSING_UID: FailureReason.CANNOT_UNDERSTAND,
    RefusalCode.INVALID_UID: FailureReason.CANNOT_UNDERSTAND,
    RefusalCode.UNDECODABLE: FailureReason.CANNOT_UNDERSTAND,
    RefusalCode.PIXEL_DATA_LENGTH: FailureReason.PIXEL_DATA_LENGTH,
    RefusalCode.DECLARED_SIZE: FailureReason.DECLARED_SIZE,
    RefusalCode.INFLATED_SIZE: FailureReason.INFLATED_SIZE,
    RefusalCode.HEADER_SIZE: FailureReason.HEADER_SIZE,
    RefusalCode.INPUT_REFUSED: FailureReason.CANNOT_UNDERSTAND,
    RefusalCode.CONTENT_CONFLICT: FailureReason.DUPLICATE_SOP_INSTANCE,
    RefusalCode.PATIENT_CONFLICT: FailureReason.PATIENT_CONFLICT,
    RefusalCode.FOREIGN_RESULT_OBJECT: FailureReason.FOREIGN_RESULT_OBJECT,
    RefusalCode.STORAGE_UNAVAILABLE: FailureReason.OUT_OF_RESOURCES,
    RefusalCode.DATABASE_UNAVAILABLE: FailureReason.OUT_OF_RESOURCES,
    RefusalCode.INTERNAL_ERROR: FailureReason.PROCESSING_FAILURE,
}


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _item(outcome: Outcome) -> dict[str, Any]:
    item = {
        "00081150": _uid(outcome.sop_class_uid),
        "00081155": _uid(outcome.sop_instance_uid),
    }
    if outcome.refusal is not None:
        item["00081197"] = {"vr": "US", "Value": [int(FAILURE_REASON_FOR_REFUSAL[outcome.refusal])]}
    return item


def _warning(outcome: Outcome) -> str:
    """A ``Warning`` header value: 299, our name, the quoted reason (ASCII, no quotes)."""
    text = f"{outcome.sop_instance_uid or 'a part'}: {outcome.comment or outcome.reason}"
    text = text.encode("ascii", "replace").decode("ascii").replace('"', "'").replace("\\", "/")
    return f'299 cxr-triage "{text[:300]}"'


def stow_response(outcomes: list[Outcome]) -> Response:
    """The PS3.18 answer to ``outcomes`` (one per part, in order): 200 all stored, 202
    some failed, 409 none stored."""
    stored = [o for o in outcomes if o.success]
    failed = [o for o in outcomes if not o.success]
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(o) for o in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    response = JSONResponse(body, status_code=status, media_type=DICOM_JSON)
    for outcome in failed[:MAX_WARNINGS]:
        response.headers.append("Warning", _warning(outcome))
    return response


def _not_dicom(part: Part) -> Outcome:
    kind = part.content_type.encode("ascii", "replace").decode("ascii")[:64]
    return refused(
        RefusalCode.UNDECODABLE,
        f"part of type {kind} is not application/dicom",
        f"part is {kind}, not application/dicom",
    )


def part10_head(head: bytes) -> bytes:
    """A part's first bytes with the Part 10 preamble: File Meta without the 128-byte
    preamble and 'DICM' (as dicomweb-client and pydicom's ``dcmwrite`` write it) gets them
    put in front, so the ingest core reads it like any received file."""
    if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
        return bytes(128) + b"DICM" + head
    return head


def _check_request(request: Request, max_bytes: int) -> str:
    """The boundary of an acceptable request; raises :class:`MultipartError` (or returns
    a 415 through it) before the body is read."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise MultipartError(400, "Content-Length is not a number")
        if int(length) > max_bytes:
            raise MultipartError(
                413, f"the request body ({int(length)} bytes) is larger than {max_bytes} bytes"
            )
    kind, params = media_type(request.headers.get("content-type", ""))
    if kind != "multipart/related":
        raise MultipartError(
            415, 'send multipart/related; type="application/dicom" (STOW-RS, PS3.18 10.5)'
        )
    part_type = media_type(params.get("type", DICOM))[0]
    if part_type != DICOM:
        raise MultipartError(
            415, f"parts of type {part_type[:64]} are not accepted: send application/dicom"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError(400, "the Content-Type has no boundary parameter")
    return boundary


async def _store(
    request: Request,
    state: State,
    principal: Principal,
    study_instance_uid: str | None,
) -> Response:
    rules: Ingest | None = state.stow
    if rules is None:
        return json_error(503, "STOW-RS is not enabled on this server (no broker configured)")
    cfg = state.config
    try:
        boundary = _check_request(request, cfg.stow_max_bytes)
        folder = await run_in_threadpool(rules.storage.staging_dir)
        parts = await read_parts(
            request.stream(),
            boundary,
            folder,
            max_bytes=cfg.stow_max_bytes,
            max_parts=cfg.stow_max_instances,
            head=part10_head,
        )
    except MultipartError as exc:
        logger.warning("STOW-RS request refused: %d %s", exc.status_code, exc.message)
        return json_error(exc.status_code, exc.message)
    except (OSError, StorageError):
        logger.error("STOW-RS: the storage staging folder is not writable")
        return json_error(503, "storage unavailable: retry later", **{"Retry-After": "60"})
    if not parts:
        return json_error(400, "the request holds no part")
    source = Source(
        Transport.STOW,
        identity=principal.name,
        peer_address=client_addr(request),
        announced_study_instance_uid=study_instance_uid,
    )
    outcomes: list[Outcome] = []
    try:
        for part in parts:
            if part.content_type not in ("", DICOM):
                outcomes.append(_not_dicom(part))
                continue
            received = Received(path=part.path)
            outcomes.append(await run_in_threadpool(ingest, rules, received, source))
    finally:
        for part in parts:  # ingest took over (moved or removed) every file it was given
            with contextlib.suppress(OSError):
                part.path.unlink(missing_ok=True)
    for outcome in outcomes:
        if outcome.refusal is not None:
            logger.warning(
                "STOW-RS refused: failure_reason=0x%04X sop_instance_uid=%s sender=%s reason=%s",
                FAILURE_REASON_FOR_REFUSAL[outcome.refusal],
                (outcome.sop_instance_uid or "?")[:64],
                principal.name,
                outcome.reason,
            )
    return stow_response(outcomes)


@router.post("/studies")
async def store_instances(request: Request, state: State, principal: Sender) -> Response:
    """STOW-RS: store the instances of the body (any study)."""
    return await _store(request, state, principal, None)


@router.post("/studies/{study_instance_uid}")
async def store_study_instances(
    study_instance_uid: str, request: Request, state: State, principal: Sender
) -> Response:
    """STOW-RS: store the instances of the body, all of study ``study_instance_uid``."""
    try:
        study = sanitise_uid(study_instance_uid)
    except ValueError:
        return json_error(400, "the study in the path is not a valid UID")
    return await _store(request, state, principal, study)
