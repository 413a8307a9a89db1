"""Web worklist HTML and the shared presentation: everything escaped, flags and reasons
shown, the same labels in the CLI and on the web (no services needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cxr_db.accounts.tables import Role
from cxr_db.instances.statuses import STATUS_LABELS, InstanceStatus, StatusReason
from cxr_db.reading.tables import Finding, ReadState
from cxr_db.worklist.reads import InstanceDetail, ReadView, StudyDetail, WorklistEntry
from cxr_triage.worklist_view import DISCLAIMER, as_json, as_table
from worklist import pages, present
from worklist.radiograph import PatientContext

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


def _page(entries: list[WorklistEntry], now: datetime) -> str:
    return pages.worklist_page(pages.WorklistView(view=ReadView.ALL, entries=entries, now=now))


def test_values_from_the_database_are_escaped() -> None:
    page = _page(
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
    assert "bad &#34;tag&#34; &lt;0028,0010&gt; &amp; more" in page  # markupsafe spells " as &#34;


def test_worklist_page_marks_flags_scores_and_the_disclaimer() -> None:
    page = _page([_entry()], NOW)
    assert DISCLAIMER in page
    assert "LIKELY POSITIVE" in page
    assert "0.912" in page
    assert "2026-01-02 03:04:05" in page
    assert 'href="/studies/1.2.3.4"' in page


def test_empty_worklist_says_so() -> None:
    page = _page([], NOW)
    assert "No studies on the worklist yet." in page
    assert DISCLAIMER in page


@pytest.mark.parametrize("status", list(InstanceStatus))
def test_web_and_cli_label_a_status_the_same_way(status: InstanceStatus) -> None:
    entry = _entry(status=status, flagged=False)
    label = present.status_label(status)
    assert label == STATUS_LABELS[status]
    assert f">{label}</span>" in _page([entry], NOW)
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
        "score_interval": None,
        "flagged": True,
        "model_version": "v1",
        "received_at": "2026-01-02T03:04:05+00:00",
        "scored_at": None,
        "instances": 1,
        "heatmap_sop_instance_uids": ["1.2.3.4.1"],
        "population": None,
        "population_reason": None,
        "shadow_score": None,
        "read_state": "unread",
        "claimed_by": None,
        "claim_expires_at": None,
        "finding": None,
        "read_by": None,
        "read_at": None,
        "results": None,
        "escalated": False,
        "escalations": 0,
    }
    assert present.entry_json(_entry())["reason"] is None
    read = present.entry_json(
        _entry(read_state=ReadState.READ, finding=Finding.OTHER, read_by="ann", read_at=NOW)
    )
    assert (read["read_state"], read["finding"], read["read_by"], read["read_at"]) == (
        "read",
        "other",
        "ann",
        "2026-01-02T03:04:05+00:00",
    )


def test_a_single_reason_does_not_repeat_the_badge_several_are_spelled_out() -> None:
    one = (StatusReason(InstanceStatus.NOT_ELIGIBLE, "lateral view"),)
    assert present.badge_note(InstanceStatus.NOT_ELIGIBLE, one) == "lateral view"
    two = (StatusReason(InstanceStatus.FAILED, "truncated"), *one)
    assert present.badge_note(InstanceStatus.FAILED, two) == (
        "failed: truncated; not eligible: lateral view"
    )
    page = _page([_entry(status=InstanceStatus.NOT_ELIGIBLE, reasons=one, flagged=False)], NOW)
    assert '<span class="reason not_eligible">lateral view</span>' in page


def test_read_state_is_shown_in_the_worklist_and_the_cli_table() -> None:
    busy = _entry(read_state=ReadState.IN_PROGRESS, claimed_by="<ann>", claim_expires_at=NOW)
    page = _page([busy], NOW)
    assert "in progress by &lt;ann&gt;" in page
    assert "until 03:04 UTC" in page
    assert "in progress by <ann>" in as_table([busy])
    done = _entry(read_state=ReadState.READ, finding=Finding.PNEUMONIA, read_by="ben", read_at=NOW)
    assert "read by ben: pneumonia" in _page([done], NOW)


def _study(**kw: object) -> pages.StudyView:
    entry = _entry(accession_number="<b>ACC</b>")
    inst = InstanceDetail(
        sop_instance_uid="1.2.3.4.1",
        status=InstanceStatus.DONE,
        reason=None,
        view_position="PA",
        received_at=NOW,
        probability=0.91234,
        threshold=0.42,
        flagged=True,
        model_version="v1",
        scored_at=NOW,
        has_heatmap=True,
    )
    base: dict[str, object] = {
        "detail": StudyDetail(entry, (inst,)),
        "instances": (pages.InstanceView(inst, radiograph=True),),
        "patient": PatientContext(
            name="<i>Doe</i>, Jane",
            patient_id="P1",
            age="64 y",
            sex="F",
            study_date="2026-01-15",
            body_part="CHEST",
            view="PA",
            burned_in_annotation=False,
        ),
        "patient_problem": None,
        "answers": (),
        "can_answer": True,
        "claimed_by_me": False,
        "csrf_token": 'tok"en',
        "threshold": 0.42,
    }
    base.update(kw)
    return pages.StudyView(**base)  # type: ignore[arg-type]


def test_study_page_escapes_patient_context_and_carries_csrf_and_viewer() -> None:
    nav = pages.Nav("ann", Role.RADIOLOGIST, 'tok"en')
    page = pages.study_page(_study(), nav)
    assert "&lt;i&gt;Doe&lt;/i&gt;, Jane" in page
    assert "&lt;b&gt;ACC&lt;/b&gt;" in page
    assert 'value="tok&#34;en"' in page
    assert "<script>" not in page
    assert '<script src="/static/viewer.js" defer></script>' in page
    assert 'class="controls" hidden' in page  # shown by the script only
    assert "≥ threshold 0.420" in page
    assert DISCLAIMER in page
    for finding in Finding:
        assert f'value="{finding.value}"' in page


def test_study_page_without_answer_rights_or_radiograph() -> None:
    withheld = "Radiograph withheld: text is burned into its pixels (see the PACS)."
    view = _study(
        can_answer=False,
        instances=(pages.InstanceView(_study().detail.instances[0], False, withheld),),
        patient=None,
        patient_problem="Patient context unavailable.",
    )
    page = pages.study_page(view)
    assert 'id="answer-form"' not in page
    assert withheld in page
    assert 'class="controls"' not in page
    assert "Patient context unavailable." in page


def test_sign_in_page_has_the_form_token_and_no_script() -> None:
    page = pages.sign_in_page("abc", "/studies/1.2", "Sign-in failed")
    assert 'name="csrf_token" value="abc"' in page
    assert 'name="next" value="/studies/1.2"' in page
    assert 'type="password"' in page
    assert "<script" not in page
    assert DISCLAIMER in page


def test_every_page_escapes_what_it_is_given() -> None:
    """Autoescaping is on for every template, the layout's header included."""
    hostile = "<script>alert(1)</script>"
    nav = pages.Nav(hostile, Role.ADMIN, hostile)
    audit = pages.AuditView([], {"actor": hostile}, "/admin/audit?actor=" + hostile, 0)
    rendered = {
        "error": pages.error_page(hostile, hostile, nav),
        "model card": pages.model_card_page(hostile, nav),
        "ops": pages.ops_page({hostile: hostile}, nav),
        "users": pages.users_page([], [], nav),
        "audit": pages.audit_page(audit, nav),
        "sign-in": pages.sign_in_page(hostile, hostile, hostile),
        "worklist": pages.worklist_page(
            pages.WorklistView(view=ReadView.ALL, entries=[], now=NOW, search=hostile), nav
        ),
    }
    for name, page in rendered.items():
        assert "<script>" not in page, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, name
        assert DISCLAIMER in page, name


def test_a_score_shows_its_interval_on_the_page_in_the_cli_and_in_json() -> None:
    wide = _entry(score=0.31, score_lower=0.165, score_upper=0.448)
    narrow = _entry(
        study_instance_uid="1.2.3.5", score=0.31, score_lower=0.30, score_upper=0.33, flagged=False
    )
    assert present.score_text(0.31, 0.165, 0.448) == "0.310 ± 0.145"  # the larger side
    assert present.score_text(0.31) == "0.310"
    page = _page([wide, narrow], NOW)
    assert "0.310 ± 0.145" in page
    assert "0.310 ± 0.020" in page
    table = as_table([wide, narrow])
    assert "0.310 ± 0.145" in table
    assert "0.310 ± 0.020" in table
    objs = json.loads(as_json([wide, narrow]))
    assert [o["score_interval"] for o in objs] == [[0.165, 0.448], [0.30, 0.33]]


def test_a_shadow_score_keeps_its_interval_greyed() -> None:
    entry = _entry(score=None, shadow_score=0.5, score_lower=0.33, score_upper=0.73, flagged=False)
    assert "(0.500 ± 0.230)" in _page([entry], NOW)
    assert "(0.500 ± 0.230)" in as_table([entry])


def test_an_open_escalation_shows_a_badge_in_its_row_only() -> None:
    escalated = _entry(escalated=True, escalations=2)
    page = _page([escalated, _entry(study_instance_uid="1.2.3.5")], NOW)
    assert page.count("ESCALATED</span>") == 1
    assert "escalated 2 times" in page
    assert present.entry_json(escalated)["escalated"] is True
