"""The STOW-RS client (PS3.18 10.5): result objects to a DICOMweb destination.

:func:`send_objects` POSTs the data sets, each as a Part 10 ``application/dicom`` part of
one ``multipart/related`` request, to ``<base>/studies`` and answers one
:class:`~cxr_results.send.StoreOutcome` per data set, in order, as the C-STORE client
does, so the results sender records attempts, keeps its idempotency and retries the same
way for both kinds of destination.

Reading the answer
    200: every object stored (status 0x0000), unless the body's FailedSOPSequence lists
    one anyway. 202 and 409: each object in FailedSOPSequence (0008,1198) failed with its
    FailureReason (0008,1197) as the status; each in ReferencedSOPSequence (0008,1199)
    was stored (status 0x0000, or its WarningReason (0008,1196): stored with a warning);
    one in neither was not stored. Any other answer (401, 403, 413, 415, 5xx ...) fails
    every object with the HTTP status in the reason.
No answer
    Refused, unreachable, TLS failure or timed out before an answer:
    :class:`~cxr_results.errors.AssociationError` (a ``TransientError``), as when no
    association can be established: nothing was stored.
Credentials
    A bearer token or HTTP basic auth (:class:`DicomwebAuth`, from the settings), never in
    the URL, so the URL logged and recorded with each attempt holds none. Logs carry the
    destination, SOP Instance UIDs and statuses, never patient data.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydicom.dataset import Dataset

from cxr_results.destinations import DicomwebDestination
from cxr_results.errors import AssociationError
from cxr_results.send import SUCCESS, StoreItem, StoreOutcome

__all__ = ["DicomwebAuth", "send_objects"]

logger = logging.getLogger(__name__)

_FAILED = "00081198"
_REFERENCED = "00081199"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


@dataclass(frozen=True)
class DicomwebAuth:
    """How to authenticate to DICOMweb destinations: a bearer token, or a user name and
    password (HTTP basic); neither shown by ``repr``."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def httpx_auth(self) -> httpx.Auth | None:
        if self.username is not None:
            return httpx.BasicAuth(self.username, self.password or "")
        return None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _body(datasets: Sequence[Dataset], boundary: str) -> bytes:
    out = io.BytesIO()
    for ds in datasets:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        out.write(_part10(ds))
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode("ascii"))
    return out.getvalue()


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _by_uid(answer: dict[str, Any], tag: str) -> dict[str, dict[str, Any]]:
    items = answer.get(tag, {}).get("Value") or []
    return {
        str(_first(i, _SOP_INSTANCE)): i
        for i in items
        if isinstance(i, dict) and _first(i, _SOP_INSTANCE)
    }


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = json.loads(response.content) if response.content else {}
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _detail(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return f"HTTP {response.status_code}" + (f": {text[:200]}" if text else "")


def _outcomes(
    items: Sequence[StoreItem], response: httpx.Response, peer: str
) -> list[StoreOutcome]:
    status = response.status_code
    if status not in (200, 202, 409):
        reason = f"{peer} answered {_detail(response)}"
        return [
            StoreOutcome(i.sop_class_uid, i.sop_instance_uid, False, None, reason) for i in items
        ]
    answer = _json(response)
    failed = _by_uid(answer, _FAILED)
    referenced = _by_uid(answer, _REFERENCED)
    outcomes = []
    for item in items:
        uid = item.sop_instance_uid
        if uid in failed:
            code = _first(failed[uid], _FAILURE_REASON)
            reason = f"{peer} answered HTTP {status}, FailureReason " + (
                f"0x{int(code):04X}" if isinstance(code, int) else "missing"
            )
            outcomes.append(
                StoreOutcome(
                    item.sop_class_uid,
                    uid,
                    False,
                    int(code) if isinstance(code, int) else None,
                    reason,
                )
            )
        elif uid in referenced or status == 200:
            warning = _first(referenced.get(uid, {}), _WARNING_REASON)
            if isinstance(warning, int):
                outcomes.append(
                    StoreOutcome(
                        item.sop_class_uid,
                        uid,
                        True,
                        warning,
                        f"stored with WarningReason 0x{warning:04X}",
                    )
                )
            else:
                outcomes.append(StoreOutcome(item.sop_class_uid, uid, True, SUCCESS))
        else:
            reason = f"{peer} answered HTTP {status} without this instance in its response"
            outcomes.append(StoreOutcome(item.sop_class_uid, uid, False, None, reason))
    return outcomes


def send_objects(
    destination: DicomwebDestination,
    datasets: Sequence[Dataset],
    auth: DicomwebAuth | None = None,
    timeout_s: float = 60.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> list[StoreOutcome]:
    """STOW-RS ``datasets`` to ``destination``; one outcome each, in order (see the module
    docstring). Raises :class:`AssociationError` when no answer came (nothing stored)."""
    items = [StoreItem.of_dataset(ds) for ds in datasets]
    if not items:
        return []
    boundary = f"cxr-{uuid.uuid4().hex}"
    auth = auth or DicomwebAuth()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **auth.headers(),
    }
    try:
        with httpx.Client(timeout=timeout_s, auth=auth.httpx_auth(), transport=transport) as client:
            response = client.post(
                destination.studies_url, content=_body(datasets, boundary), headers=headers
            )
    except httpx.HTTPError as exc:
        reason = f"no answer ({type(exc).__name__}): refused, unreachable, TLS or timed out"
        logger.warning("STOW-RS to %s: %s", destination, reason)
        raise AssociationError(str(destination), reason) from exc
    outcomes = _outcomes(items, response, str(destination))
    for outcome in outcomes:
        logger.info(
            "STOW-RS %s to %s: %s",
            outcome.sop_instance_uid,
            destination,
            "stored" if outcome.stored else f"failed ({outcome.reason})",
        )
    return outcomes
