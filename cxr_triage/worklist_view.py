"""The worklist as a readable table or as JSON (one object per study, worklist order).

Labels, reason text and the JSON shape come from ``worklist.present``, so the CLI and the
web app say the same thing about the same study.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cxr_common.clinical import DISCLAIMER
from cxr_db.worklist.reads import WorklistEntry
from worklist.present import (
    entry_json,
    population_text,
    read_label,
    reason_text,
    score_text,
    status_label,
)

__all__ = ["DISCLAIMER", "as_json", "as_table"]


def as_json(entries: Sequence[WorklistEntry]) -> str:
    return json.dumps([entry_json(e) for e in entries], indent=2)


def _fmt_time(entry: WorklistEntry) -> str:
    return entry.received_at.strftime("%Y-%m-%d %H:%M:%S")


def _score(e: WorklistEntry) -> str:
    if e.score is not None:
        return score_text(e.score, e.score_lower, e.score_upper)
    if e.shadow_score is not None:  # shadow: shown, does not triage
        return f"({score_text(e.shadow_score, e.score_lower, e.score_upper)})"
    return "-"


def _note(e: WorklistEntry) -> str | None:
    notes = [reason_text(e.reasons)]
    if e.population not in (None, "in_scope"):
        notes.append(population_text(e.population, e.population_reason))
    return "; ".join(n for n in notes if n) or None


def as_table(entries: Sequence[WorklistEntry]) -> str:
    """A fixed-width table: priority, accession, status, score, model, received, read
    state, reason."""
    header = (
        "#",
        "PRIORITY",
        "ACCESSION/STUDY",
        "STATUS",
        "SCORE",
        "MODEL",
        "RECEIVED (UTC)",
        "READ",
        "NOTE",
    )
    rows = [header]
    for i, e in enumerate(entries, 1):
        rows.append(
            (
                str(i),
                "LIKELY +" if e.flagged else "",
                e.accession_number or "…" + e.study_instance_uid[-12:],
                status_label(e.status),
                _score(e),
                e.model_version or "-",
                _fmt_time(e),
                read_label(e),
                (_note(e) or "")[:70],
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    flagged = sum(e.flagged for e in entries)
    lines.append("")
    lines.append(f"{len(entries)} studies, {flagged} flagged likely positive. {DISCLAIMER}")
    if any(e.shadow_score is not None and e.score is None for e in entries):
        lines.append(
            "(score) = shadow score of a study outside the model's validated population: "
            "it does not triage; read normally."
        )
    return "\n".join(lines)
