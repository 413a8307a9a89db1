"""The one C-STORE client (pynetdicom SCU) of cxr-triage: result objects to PACS
(:func:`send_objects`) and files to a listener (``cxr-triage send``, :mod:`cxr_triage.send`)
both go through :func:`store`.

What to store is a list of :class:`StoreItem`: a data set in memory, or a file sent exactly
as stored. :func:`store` answers one :class:`StoreOutcome` per item, in order.

Presentation contexts
    Each SOP class is proposed with Explicit and Implicit VR Little Endian (every SCP
    accepts Implicit; pynetdicom converts a data set between the two). A file also gets a
    context with its own transfer syntax, so compressed pixel data is sent as is, never
    transcoded. Every association also proposes Verification: it stays up when the peer
    accepts none of the storage contexts, so each item gets its own reason. PS3.8 allows
    128 contexts per association (odd IDs 1 to 255): items needing more are split over
    several associations, one after the other.
Success rule (PS3.4 B.2.3)
    ``0x0000`` Success, and the Warnings ``0xB000`` (coercion of data elements),
    ``0xB006`` (elements discarded) and ``0xB007`` (data set does not match SOP class)
    mean the peer stored the object (:func:`is_stored`). Any other status is a failure;
    its outcome carries the status and a reason with the Error Comment.
Associations
    No association for the first items (refused, unreachable, rejected, aborted, timed
    out): :class:`~cxr_results.errors.AssociationError`, a ``TransientError`` worth
    retrying; nothing was sent. An association lost part-way is opened again once for the
    items not yet sent; the item in flight fails (it may or may not have been stored).
    Items no association could carry fail with the reason. All waits are bounded by
    :class:`Timeouts`.

Logs carry the destination, SOP Instance UIDs and statuses, never patient data.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_results.destinations import Destination
from cxr_results.errors import AssociationError

__all__ = [
    "DEFAULT_CALLING_AE_TITLE",
    "MAX_CONTEXTS",
    "SUCCESS",
    "SendOutcome",
    "StoreItem",
    "StoreOutcome",
    "StoreWarning",
    "Timeouts",
    "is_stored",
    "send_objects",
    "store",
]

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AE_TITLE = "CXR_TRIAGE"
#: Most presentation contexts one association may propose (PS3.8: odd IDs 1..255); one of
#: them is Verification.
MAX_CONTEXTS = 128
_UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

#: C-STORE Success (PS3.4 Table B.2-1).
SUCCESS = 0x0000


class StoreWarning(IntEnum):
    """C-STORE Warning statuses (PS3.4 Table B.2-1): the object was stored."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


_WARNINGS = frozenset(StoreWarning)


def is_stored(status: int) -> bool:
    """True when a C-STORE response status means the peer stored the object: Success or
    one of the standard's Warnings. Everything else is a failure."""
    return status == SUCCESS or status in _WARNINGS


@dataclass(frozen=True)
class Timeouts:
    """Seconds each wait may last; none is unbounded."""

    connection_s: float = 10.0
    acse_s: float = 30.0
    dimse_s: float = 60.0
    network_s: float = 60.0


@dataclass(frozen=True)
class StoreItem:
    """One object to store: a data set, or a file sent as stored (``transfer_syntax_uid``,
    from its File Meta, is proposed as is)."""

    source: Dataset | Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str | None = None

    @classmethod
    def of_dataset(cls, ds: Dataset) -> StoreItem:
        return cls(ds, _uid(ds, "SOPClassUID"), _uid(ds, "SOPInstanceUID"))


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one item: ``stored`` per :func:`is_stored`; ``status`` is the
    peer's answer (None: no answer); ``reason`` says why it was not stored (or names the
    warning it was stored with)."""

    sop_class_uid: str
    sop_instance_uid: str
    stored: bool
    status: int | None
    reason: str | None = None


#: The results sender's name for an outcome.
SendOutcome = StoreOutcome


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise ValueError(f"a data set to send has no {keyword}")
    return value


def _contexts(items: Sequence[StoreItem]) -> list[tuple[str, tuple[str, ...]]]:
    """(SOP class, transfer syntaxes) to propose for ``items``, Verification aside."""
    pairs: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        if item.transfer_syntax_uid is not None:
            pairs[(item.sop_class_uid, (item.transfer_syntax_uid,))] = None
        pairs[(item.sop_class_uid, _UNCOMPRESSED)] = None
    return list(pairs)


def _batches(items: Sequence[StoreItem]) -> list[list[StoreItem]]:
    """``items`` in order, split so that no association proposes more than
    ``MAX_CONTEXTS`` contexts (Verification included)."""
    batches: list[list[StoreItem]] = []
    current: list[StoreItem] = []
    for item in items:
        if current and len(_contexts([*current, item])) > MAX_CONTEXTS - 1:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def _describe_failure(assoc: Association) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = getattr(primitive, "reason_str", None) if primitive is not None else None
        return f"association rejected ({reason})" if reason else "association rejected"
    if assoc.acceptor.primitive is None:
        return "no answer: could not connect (refused, unreachable, timed out or aborted)"
    if assoc.is_aborted:
        return "association aborted"
    return "association not established"


def _close_socket(assoc: Association) -> None:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _failed(item: StoreItem, reason: str, status: int | None = None) -> StoreOutcome:
    return StoreOutcome(item.sop_class_uid, item.sop_instance_uid, False, status, reason[:300])


def _store_one(assoc: Association, item: StoreItem, peer: str) -> StoreOutcome:
    try:
        rsp = assoc.send_c_store(item.source)
    except ValueError as exc:  # no accepted presentation context for this item
        return _failed(item, f"not accepted by {peer}: {exc}".splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable file: report it, go on
        return _failed(item, f"cannot send ({type(exc).__name__}: {exc})")
    status = rsp.get("Status") if rsp else None
    if status is None:
        return _failed(item, "no C-STORE response (connection lost, timed out or aborted)")
    code = int(status)
    if code == SUCCESS:
        return StoreOutcome(item.sop_class_uid, item.sop_instance_uid, True, code)
    if is_stored(code):
        warning = StoreWarning(code).name.lower().replace("_", " ")
        reason = f"stored with warning 0x{code:04X} ({warning})"
        return StoreOutcome(item.sop_class_uid, item.sop_instance_uid, True, code, reason)
    comment = rsp.get("ErrorComment")
    reason = f"{peer} answered 0x{code:04X}" + (f": {comment}" if comment else "")
    return _failed(item, reason, code)


def client_tls_context(
    ca_file: Path, certificate_file: Path | None = None, private_key_file: Path | None = None
) -> ssl.SSLContext:
    """A client-side TLS context (TLS 1.2+) for DICOM TLS (PS3.15 B.1): the destination's
    certificate must be signed by ``ca_file`` and name the host we connect to; with
    ``certificate_file``/``private_key_file`` we present our own (client) certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate_file is not None and private_key_file is not None:
        context.load_cert_chain(str(certificate_file), str(private_key_file))
    return context


def store(
    destination: Destination,
    items: Sequence[StoreItem],
    *,
    calling_ae_title: str = DEFAULT_CALLING_AE_TITLE,
    timeouts: Timeouts | None = None,
    peer: str = "the destination",
    on_outcome: Callable[[StoreOutcome], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> list[StoreOutcome]:
    """C-STORE ``items`` on ``destination``; one outcome each, in order (see the module
    docstring). ``peer`` names the destination in reasons; ``on_outcome`` is called as
    each outcome is known; ``tls`` (:func:`client_tls_context`): DICOM TLS, the
    destination's certificate checked against the CA and its host name.

    Raises :class:`AssociationError` when no association can be established for the
    first items (nothing was sent)."""
    timeouts = timeouts or Timeouts()
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeouts.connection_s
    ae.acse_timeout = timeouts.acse_s
    ae.dimse_timeout = timeouts.dimse_s
    ae.network_timeout = timeouts.network_s
    outcomes: list[StoreOutcome] = []

    def record(outcome: StoreOutcome) -> None:
        outcomes.append(outcome)
        logger.info(
            "C-STORE %s to %s: %s",
            outcome.sop_instance_uid,
            destination,
            "stored" if outcome.stored else f"failed ({outcome.reason})",
        )
        if on_outcome is not None:
            on_outcome(outcome)

    def associate(batch: Sequence[StoreItem]) -> Association:
        contexts: list[PresentationContext] = [
            build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in _contexts(batch)
        ]
        contexts.append(build_context(Verification))
        return ae.associate(
            destination.host,
            destination.port,
            contexts=contexts,
            ae_title=destination.ae_title,
            tls_args=(tls, destination.host) if tls is not None else None,
        )

    try:
        for batch in _batches(items):
            remaining = list(batch)
            for attempt in (1, 2):
                assoc = associate(remaining)
                if not assoc.is_established:
                    _close_socket(assoc)  # pynetdicom may leave it open (a failed TLS handshake)
                    reason = _describe_failure(assoc)
                    logger.warning("no association with %s: %s", destination, reason)
                    if not outcomes:
                        raise AssociationError(str(destination), reason)
                    for item in remaining:
                        record(_failed(item, reason))
                    remaining = []
                    break
                try:
                    while remaining and assoc.is_established:
                        record(_store_one(assoc, remaining.pop(0), peer))
                finally:
                    if assoc.is_established:
                        assoc.release()
                if not remaining:
                    break
                if attempt == 2:  # lost again: give up on the rest of this batch
                    for item in remaining:
                        record(_failed(item, "association lost twice before this was sent"))
    finally:
        ae.shutdown()
    return outcomes


def send_objects(
    destination: Destination,
    datasets: Sequence[Dataset],
    calling_ae_title: str = DEFAULT_CALLING_AE_TITLE,
    timeouts: Timeouts | None = None,
    tls: ssl.SSLContext | None = None,
) -> list[SendOutcome]:
    """Store result objects (data sets) on ``destination``; one outcome each (over DICOM
    TLS with ``tls``).

    Raises :class:`AssociationError` when no association can be established (a TLS
    handshake that fails included)."""
    items = [StoreItem.of_dataset(ds) for ds in datasets]
    return store(destination, items, calling_ae_title=calling_ae_title, timeouts=timeouts, tls=tls)
