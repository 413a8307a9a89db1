"""Web worklist HTML and the shared presentation: everything escaped, flags and reasons
shown, the same labels in the CLI and on the web (no services needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cxr_db.reads import WorklistEntry
from cxr_db.statuses import STATUS_LABELS, InstanceStatus, StatusReason
from cxr_triage.worklist_view import DISCLAIMER, as_json, as_table
from worklist import pages, present

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _entry(**kw: object) -> WorklistEntry:
    base: dict[str, object] = {
        "study_instance_uid": "1.2.3.4",
        "accession_number": "ACC-1",
        "status": InstanceStatus.DONE,
        "reasons": (),
        "score": 0.91234,
        "flagged": True,
        "model_version": "v1",
        "received_at": NOW,
        "scored_at": NOW,
        "instances": 1,
        "heatmap_sop_instance_uids": ("1.2.3.4.1",),
    }
    base.update(kw)
    return WorklistEntry(**base)  # type: ignore[arg-type]


def test_values_from_the_database_are_escaped() -> None:
    page = pages.worklist_page(
        [
            _entry(accession_number="<script>alert(1)</script>"),
            _entry(
                study_instance_uid="1.2.3.5",
                status=InstanceStatus.FAILED,
                reasons=(StatusReason(InstanceStatus.FAILED, 'bad "tag" <0028,0010> & more'),),
                flagged=False,
                score=None,
            ),
        ],
        NOW,
    )
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bad &quot;tag&quot; &lt;0028,0010&gt; &amp; more" in page


def test_worklist_page_marks_flags_scores_and_the_disclaimer() -> None:
    page = pages.worklist_page([_entry()], NOW)
    assert DISCLAIMER in page
    assert "LIKELY POSITIVE" in page
    assert "0.912" in page
    assert "2026-01-02 03:04:05" in page
    assert 'href="/studies/1.2.3.4"' in page


def test_empty_worklist_says_so() -> None:
    page = pages.worklist_page([], NOW)
    assert "No studies on the worklist yet." in page
    assert DISCLAIMER in page


@pytest.mark.parametrize("status", list(InstanceStatus))
def test_web_and_cli_label_a_status_the_same_way(status: InstanceStatus) -> None:
    entry = _entry(status=status, flagged=False)
    label = present.status_label(status)
    assert label == STATUS_LABELS[status]
    assert f">{label}</span>" in pages.worklist_page([entry], NOW)
    row = as_table([entry]).splitlines()[2]
    assert f"  {label}  " in row


def test_a_scored_study_reads_scored_everywhere_but_json_keeps_the_value() -> None:
    entry = _entry(status=InstanceStatus.DONE)
    assert present.status_label(InstanceStatus.DONE) == "scored"
    assert " done " not in as_table([entry])
    assert json.loads(as_json([entry]))[0]["status"] == "done"


def test_json_entry_keeps_its_keys_and_formats_reasons_once() -> None:
    entry = _entry(
        status=InstanceStatus.FAILED,
        reasons=(
            StatusReason(InstanceStatus.FAILED, "truncated stream"),
            StatusReason(InstanceStatus.NOT_ELIGIBLE, None),
        ),
        scored_at=None,
    )
    (obj,) = json.loads(as_json([entry]))
    assert obj == {
        "study_instance_uid": "1.2.3.4",
        "accession_number": "ACC-1",
        "status": "failed",
        "reason": "failed: truncated stream; not eligible: no reason given",
        "score": 0.91234,
        "flagged": True,
        "model_version": "v1",
        "received_at": "2026-01-02T03:04:05+00:00",
        "scored_at": None,
        "instances": 1,
        "heatmap_sop_instance_uids": ["1.2.3.4.1"],
        "population": None,
        "population_reason": None,
        "shadow_score": None,
    }
    assert present.entry_json(_entry())["reason"] is None


def test_a_single_reason_does_not_repeat_the_badge_several_are_spelled_out() -> None:
    one = (StatusReason(InstanceStatus.NOT_ELIGIBLE, "lateral view"),)
    assert present.badge_note(InstanceStatus.NOT_ELIGIBLE, one) == "lateral view"
    two = (StatusReason(InstanceStatus.FAILED, "truncated"), *one)
    assert present.badge_note(InstanceStatus.FAILED, two) == (
        "failed: truncated; not eligible: lateral view"
    )
    page = pages.worklist_page(
        [_entry(status=InstanceStatus.NOT_ELIGIBLE, reasons=one, flagged=False)], NOW
    )
    assert '<span class="reason not_eligible">lateral view</span>' in page
