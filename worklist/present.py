"""How a worklist entry is shown, for the web app and the CLI alike: the status label, the
reason text and the JSON shape of one study (``GET /api/worklist`` and
``cxr-triage worklist --json`` return the same objects, read state included), and the
formatting the page templates call (times, scores, links, labels)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from cxr_common.model_files import read_finding
from cxr_db.accounts.store import UserInfo
from cxr_db.escalations.store import DeliveryInfo
from cxr_db.instances.statuses import (
    PENDING_STATUSES,
    REASON_STATUSES,
    STATUS_LABELS,
    InstanceStatus,
    StatusReason,
)
from cxr_db.reading.tables import Finding, ReadState
from cxr_db.results.states import ResultState
from cxr_db.results.store import StudyResults
from cxr_db.worklist.reads import ReadView, WorklistEntry

NO_REASON = "no reason given"


def status_label(status: InstanceStatus) -> str:
    """The word a person reads for ``status`` ("scored", "FAILED", …)."""
    return STATUS_LABELS[status]


def reason_text(reasons: Sequence[StatusReason]) -> str | None:
    """``"failed: <reason>; not eligible: <reason>"``, or None when there is no reason."""
    if not reasons:
        return None
    return "; ".join(
        f"{r.status.value.replace('_', ' ')}: {r.reason or NO_REASON}" for r in reasons
    )


def badge_note(status: InstanceStatus, reasons: Sequence[StatusReason]) -> str | None:
    """The text beside a status label: the reasons, without repeating the label when the
    one reason is of that same status."""
    if len(reasons) == 1 and reasons[0].status == status:
        return reasons[0].reason or NO_REASON
    return reason_text(reasons)


def score_text(score: float | None, lower: float | None = None, upper: float | None = None) -> str:
    """``"0.310 ± 0.143"``: the score and its uncertainty, the larger distance from the score
    to an end of its interval (``cxr_model.calibration.ScoreInterval``, 95%), so a symmetric
    reading never understates it; ``"0.310"`` when the score has no interval; a dash for no
    score."""
    if score is None:
        return NO_VALUE
    if lower is None or upper is None:
        return f"{score:.3f}"
    return f"{score:.3f} ± {max(score - lower, upper - score, 0.0):.3f}"


def interval_json(lower: float | None, upper: float | None) -> list[float] | None:
    """``[lower, upper]`` of a score's interval, or None without one."""
    return None if lower is None or upper is None else [lower, upper]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def entry_json(entry: WorklistEntry) -> dict[str, object]:
    """One study as a JSON object (keys and values are an API: change them deliberately)."""
    return {
        "study_instance_uid": entry.study_instance_uid,
        "accession_number": entry.accession_number,
        "status": entry.status.value,
        "reason": reason_text(entry.reasons),
        "score": entry.score,
        "score_interval": interval_json(entry.score_lower, entry.score_upper),
        "flagged": entry.flagged,
        "model_version": entry.model_version,
        "received_at": entry.received_at.isoformat(),
        "scored_at": entry.scored_at.isoformat() if entry.scored_at else None,
        "instances": entry.instances,
        "heatmap_sop_instance_uids": list(entry.heatmap_sop_instance_uids),
        "read_state": entry.read_state.value,
        "claimed_by": entry.claimed_by,
        "claim_expires_at": _iso(entry.claim_expires_at),
        "finding": entry.finding.value if entry.finding else None,
        "read_by": entry.read_by,
        "read_at": _iso(entry.read_at),
        "results": results_json(entry.results),
        "escalated": entry.escalated,
        "escalations": entry.escalations,
    } | population_json(entry)


def results_json(results: StudyResults | None) -> dict[str, object] | None:
    """A study's results back to PACS and the RIS: state, version, the newest attempt per
    DICOM destination (statuses as DICOM hex, e.g. "0x0000") and per HL7 receiver (ACK
    code: AA, AE, AR; None when no ACK came)."""
    if results is None:
        return None

    def _hex(code: int | None) -> str | None:
        return None if code is None else f"0x{code:04X}"

    return {
        "state": results.state.value,
        "result_version": results.result_version,
        "destinations": [
            {
                "destination": d.destination,
                "result_version": d.result_version,
                "attempt": d.attempt,
                "status": d.status.value,
                "at": d.at.isoformat(),
                "error": d.error,
                "sc_sop_instance_uid": d.sc_sop_instance_uid,
                "sr_sop_instance_uid": d.sr_sop_instance_uid,
                "sc_status": _hex(d.sc_status),
                "sr_status": _hex(d.sr_status),
                "seg_sop_instance_uid": d.seg_sop_instance_uid,
                "seg_status": _hex(d.seg_status),
            }
            for d in results.destinations
        ],
        "hl7": [
            {
                "destination": h.destination,
                "result_version": h.result_version,
                "attempt": h.attempt,
                "status": h.status.value,
                "ack_code": h.ack_code,
                "message_control_id": h.message_control_id,
                "at": h.at.isoformat(),
                "error": h.error,
            }
            for h in results.hl7
        ],
    }


FINDING_LABELS = {
    Finding.PNEUMONIA: "pneumonia",
    Finding.NO_PNEUMONIA: "no pneumonia",
    Finding.OTHER: "other finding",
}


def read_label(entry: WorklistEntry) -> str:
    """``unread``, ``in progress by alice`` or ``read by alice: pneumonia``."""
    if entry.read_state is ReadState.IN_PROGRESS:
        return f"in progress by {entry.claimed_by or '-'}"
    if entry.read_state is ReadState.READ:
        finding = FINDING_LABELS[entry.finding] if entry.finding else "-"
        return f"read by {entry.read_by or '-'}: {finding}"
    return "unread"


POPULATION_LABELS = {
    "in_scope": "within the validated population",
    "outside": "OUTSIDE the validated population",
    "unknown": "population unknown",
}
SHADOW_NOTE = "shadow score: shown for information, it does not triage; read normally"


def population_json(entry: WorklistEntry) -> dict[str, object]:
    """The population fields of a study's JSON (``cxr_common.population``)."""
    return {
        "population": entry.population,
        "population_reason": entry.population_reason,
        "shadow_score": entry.shadow_score,
    }


def population_text(population: str | None, reason: str | None) -> str | None:
    """``"OUTSIDE the validated population: age 54 y; ..."`` (None when not assessed)."""
    if population is None:
        return None
    label = POPULATION_LABELS.get(population, population)
    return f"{label}: {reason}" if reason else label


# ---------------------------------------------------------------------------- pages
# What the Jinja2 templates (``worklist/templates``) call to turn values into text; the
# templates escape whatever these return.

NO_VALUE = "–"


def utc_time(value: datetime | None) -> str:
    """``2026-01-02 03:04:05`` (UTC), or a dash."""
    if value is None:
        return NO_VALUE
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc_hhmm(value: datetime | None) -> str:
    """``03:04 UTC``, or a dash."""
    return NO_VALUE if value is None else value.astimezone(UTC).strftime("%H:%M UTC")


def status_kind(status: InstanceStatus) -> str:
    """The badge class of a status: every pending status looks the same."""
    return "pending" if status in PENDING_STATUSES else status.value


def status_note(status: InstanceStatus, reasons: Sequence[StatusReason]) -> str | None:
    """The text beside a status badge, for the statuses that carry reasons."""
    return badge_note(status, reasons) if status in REASON_STATUSES else None


def study_href(study_instance_uid: str) -> str:
    return "/studies/" + quote(study_instance_uid, safe=".")


def uid_path(uid: str) -> str:
    """A UID as a URL path segment."""
    return quote(uid, safe=".")


def worklist_href(view: ReadView, **params: str) -> str:
    query = {"view": view.value, **{k: v for k, v in params.items() if v}}
    return "/?" + urlencode(query)


def study_label(accession: str | None, study_instance_uid: str) -> str:
    """The accession number, or the end of the Study Instance UID without one."""
    return accession or "…" + study_instance_uid[-16:]


def dicom_status(code: int | None) -> str:
    return NO_VALUE if code is None else f"0x{code:04X}"


RESULT_STATE_LABELS = {
    ResultState.RECEIVING: "receiving images: the result is not final yet",
    ResultState.COMPLETE: "complete: results not sent (no destination configured, or sending)",
    ResultState.RESULTS_SENT: "results sent to PACS",
    ResultState.RESULTS_FAILED: "results could NOT be sent to PACS",
}


def account_status(user: UserInfo, now: datetime | None = None) -> str:
    """``active``, ``disabled`` or ``locked from some address until <time>`` (lock-outs are
    per client address: ``cxr-triage user unlock NAME`` lifts them)."""
    if user.disabled:
        return "disabled"
    if user.locked_until is not None and user.locked_until > (now or datetime.now(UTC)):
        return f"locked from some address until {utc_time(user.locked_until)}"
    return "active"


def finding_display(model_dir: Path) -> str | None:
    """What the model in ``model_dir`` reports, as people read it ("Pneumonia", from its
    ``model.json``); None when its files cannot be read."""
    try:
        return read_finding(model_dir).display
    except (OSError, ValueError):
        return None


def escalation_title(entry: WorklistEntry) -> str:
    """The hover text of a worklist row's escalation badge."""
    times = "once" if entry.escalations == 1 else f"{entry.escalations} times"
    return f"Flagged and unread: escalated {times}; open it to stop the escalation."


def delivery_text(delivery: DeliveryInfo) -> str:
    """One webhook delivery on the ops page: state, attempts, last answer."""
    attempts = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
    text = f"{delivery.state.value} ({attempts})"
    if delivery.last_error:
        text += f", last: {delivery.last_error}"
    if delivery.next_attempt_at is not None and delivery.attempts:
        text += f", next {utc_time(delivery.next_attempt_at)} UTC"
    return text


def duration_text(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``; ``7300`` -> ``2 h 1 min``."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


# ---------------------------------------------------------------------------- worklist rows

#: The age as the population check wrote it into its reason (``cxr_model.population``:
#: ``"age 54 y; within the validated population ..."``, ``Age.label`` units y/mo/wk/d).
_REASON_AGE = re.compile(r"(?:^|[\s;,(])age (\d{1,3} (?:y|mo|wk|d))\b")


def age_text(entry: WorklistEntry) -> str:
    """The patient's age at the study (``54 y``, ``6 mo``), from the population check the
    worker stored for its scored instances; a dash when it was not derived (not scored yet,
    no age in the header, or a model without a population block)."""
    match = _REASON_AGE.search(entry.population_reason or "")
    return match.group(1) if match else NO_VALUE


def waiting_text(since: datetime, now: datetime) -> str:
    """How long ago ``since`` was, coarsely: ``< 1 min``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, (now - since).total_seconds())
    if seconds < 60:
        return "< 1 min"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"
