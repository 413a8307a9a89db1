"""How a worklist entry is shown, for the web app and the CLI alike: the status label, the
reason text and the JSON shape of one study (``GET /api/worklist`` and
``cxr-triage worklist --json`` return the same objects, read state included)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cxr_db.reads import StudyResults, WorklistEntry
from cxr_db.schema_reading import Finding, ReadState
from cxr_db.statuses import STATUS_LABELS, InstanceStatus, StatusReason

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


def score_text(score: float, lower: float | None = None, upper: float | None = None) -> str:
    """``"0.310 ± 0.143"``: the score and its uncertainty, the larger distance from the score
    to an end of its interval (``cxr_model.calibration.ScoreInterval``, 95%), so a symmetric
    reading never understates it; ``"0.310"`` when the score has no interval."""
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
    } | population_json(entry)


def results_json(results: StudyResults | None) -> dict[str, object] | None:
    """A study's results back to PACS: state, version and the newest attempt per
    destination (statuses as DICOM hex, e.g. "0x0000")."""
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
            }
            for d in results.destinations
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
