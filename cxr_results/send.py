"""C-STORE of result objects to one destination (pynetdicom SCU).

:func:`send_objects` opens one association, proposing each SOP class of the data sets with
Explicit VR Little Endian (and Implicit VR Little Endian, which every SCP must accept, as
the fallback; pynetdicom converts between the two uncompressed syntaxes), stores every data
set and answers one :class:`SendOutcome` per data set, in order. All waits are bounded by
:class:`Timeouts`: TCP connect, ACSE (association answer), DIMSE (each C-STORE response)
and the network idle timeout.

* No association (connection refused, host unreachable, rejected, aborted, timed out):
  :class:`~cxr_results.errors.AssociationError`, a ``TransientError`` worth retrying.
* Association lost part-way: the data sets not yet stored get a failed outcome that says
  so (no exception: the caller keeps what was stored and retries the rest).
* Status categories per PS3.4 B.2.3 / PS3.7 C: Success and Warning (e.g. 0xB000 coercion
  of data elements) mean stored; anything else is a failure with its status.

Logs carry the destination, SOP Instance UIDs and statuses, never patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.status import code_to_category

from cxr_results.destinations import Destination
from cxr_results.errors import AssociationError

__all__ = ["DEFAULT_CALLING_AE_TITLE", "SendOutcome", "Timeouts", "send_objects"]

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AE_TITLE = "CXR_TRIAGE"
#: Most presentation contexts one association may propose (PS3.8: odd IDs 1..255).
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Timeouts:
    """Seconds each wait may last; none is unbounded."""

    connection_s: float = 10.0
    acse_s: float = 30.0
    dimse_s: float = 60.0
    network_s: float = 60.0


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one data set: ``stored`` is True for Success and Warning."""

    sop_class_uid: str
    sop_instance_uid: str
    stored: bool
    status: int | None
    reason: str | None = None


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise ValueError(f"a data set to send has no {keyword}")
    return value


def _describe_failure(assoc: Association) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = getattr(primitive, "reason_str", None) if primitive is not None else None
        return f"association rejected ({reason})" if reason else "association rejected"
    if assoc.acceptor.primitive is None:
        return "no answer (connection refused, unreachable, timed out or aborted)"
    if assoc.is_aborted:
        return "association aborted (no presentation context accepted?)"
    return "association not established"


def _store_one(assoc: Association, ds: Dataset) -> SendOutcome:
    sop_class = _uid(ds, "SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    try:
        rsp = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this SOP class
        reason = f"not accepted by the destination: {exc}".splitlines()[0][:300]
        return SendOutcome(sop_class, sop_instance, False, None, reason)
    status = rsp.get("Status") if rsp else None
    if status is None:
        return SendOutcome(
            sop_class,
            sop_instance,
            False,
            None,
            "no C-STORE response (connection lost, timed out or aborted)",
        )
    code = int(status)
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return SendOutcome(sop_class, sop_instance, True, code, None if code == 0 else category)
    comment = rsp.get("ErrorComment")
    reason = f"{category} 0x{code:04X}" + (f": {comment}" if comment else "")
    return SendOutcome(sop_class, sop_instance, False, code, reason[:300])


def send_objects(
    destination: Destination,
    datasets: Sequence[Dataset],
    calling_ae_title: str = DEFAULT_CALLING_AE_TITLE,
    timeouts: Timeouts | None = None,
) -> list[SendOutcome]:
    """Store ``datasets`` on ``destination`` over one association; one outcome each.

    Raises :class:`AssociationError` when no association can be established."""
    if not datasets:
        return []
    timeouts = timeouts or Timeouts()
    sop_classes = list(dict.fromkeys(_uid(ds, "SOPClassUID") for ds in datasets))
    if len(sop_classes) > MAX_CONTEXTS:
        raise ValueError(f"{len(sop_classes)} SOP classes exceed {MAX_CONTEXTS} contexts")
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeouts.connection_s
    ae.acse_timeout = timeouts.acse_s
    ae.dimse_timeout = timeouts.dimse_s
    ae.network_timeout = timeouts.network_s
    contexts = [
        build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for sop_class in sop_classes
    ]
    assoc = ae.associate(
        destination.host, destination.port, contexts=contexts, ae_title=destination.ae_title
    )
    if not assoc.is_established:
        reason = _describe_failure(assoc)
        logger.warning("no association with %s: %s", destination, reason)
        raise AssociationError(str(destination), reason)
    outcomes: list[SendOutcome] = []
    try:
        for ds in datasets:
            if not assoc.is_established:
                outcomes.append(
                    SendOutcome(
                        _uid(ds, "SOPClassUID"),
                        _uid(ds, "SOPInstanceUID"),
                        False,
                        None,
                        "association lost before this object was sent",
                    )
                )
                continue
            outcome = _store_one(assoc, ds)
            outcomes.append(outcome)
            logger.info(
                "C-STORE %s to %s: %s",
                outcome.sop_instance_uid,
                destination,
                "stored" if outcome.stored else f"failed ({outcome.reason})",
            )
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return outcomes
