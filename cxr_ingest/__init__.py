"""Ingest: one transport-neutral function from a received file to an outcome.

:func:`ingest` takes a received Part 10 file (a staged file or bytes: :class:`Received`)
and where it came from (:class:`Source`: transport, calling AE title or client identity,
peer address, the UIDs its request announced) and returns an :class:`Outcome`: stored,
duplicate (identical resend), our own object (dropped), or refused with a
:class:`RefusalCode`, plus the instance id. Every ingest rule lives here (limits, hash,
same-UID comparison, conflict, durable place, row, enqueue after commit: see
:mod:`cxr_ingest.core`); each way in is an adapter that only maps the outcome to its
protocol's answer: the C-STORE handler (``dicom_listener.handlers``) today, a STOW-RS
route next.

Imports no transport (pynetdicom, FastAPI, Starlette) and no torch, model or worker code
(an import-linter contract).

To add a way in: build a :class:`Source` (``Transport`` member), hand the bytes or the
staged file to :func:`ingest` with the installation's patient key
(``Ingest.patient_key = load_or_create_patient_key(settings.patient_key_file,
settings.patient_key_value())``), and map each :class:`Disposition` and
:class:`RefusalCode` to the protocol's answer (a table like
``dicom_listener.handlers.STATUS_FOR_REFUSAL``; a test that it covers every code).
"""

from cxr_ingest.content import ContentDigest, ContentHasher, content_sha256
from cxr_ingest.core import STORED_SOP_CLASSES, Ingest, Received, ingest
from cxr_ingest.header import parse_count
from cxr_ingest.identity import load_or_create_patient_key
from cxr_ingest.outcome import Disposition, Outcome, RefusalCode, Source, Transport

__all__ = [
    "STORED_SOP_CLASSES",
    "ContentDigest",
    "ContentHasher",
    "Disposition",
    "Ingest",
    "Outcome",
    "Received",
    "RefusalCode",
    "Source",
    "Transport",
    "content_sha256",
    "ingest",
    "load_or_create_patient_key",
    "parse_count",
]
