"""Web worklist HTML: everything escaped, flags and reasons shown (no services needed)."""

from __future__ import annotations

from datetime import UTC, datetime

from cxr_db.repository import WorklistEntry
from cxr_triage.worklist_view import DISCLAIMER
from worklist import pages

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _entry(**kw: object) -> WorklistEntry:
    base: dict[str, object] = {
        "study_instance_uid": "1.2.3.4",
        "accession_number": "ACC-1",
        "status": "done",
        "reason": None,
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
                status="failed",
                reason='failed: bad "tag" <0028,0010> & more',
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
