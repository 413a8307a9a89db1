"""Worklist row formatting (age, time since arrival) and the sign-in's way back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cxr_db.instances.statuses import InstanceStatus
from cxr_db.worklist.reads import WorklistEntry
from worklist.auth import return_path
from worklist.present import age_text, waiting_text

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _entry(reason: str | None) -> WorklistEntry:
    return WorklistEntry(
        study_instance_uid="1.2.3",
        accession_number=None,
        status=InstanceStatus.DONE,
        reasons=(),
        score=0.5,
        flagged=False,
        model_version="v1",
        received_at=NOW,
        scored_at=NOW,
        instances=1,
        heatmap_sop_instance_uids=(),
        population="in_scope",
        population_reason=reason,
    )


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("age 54 y; within the validated population (18-64 y): the score triages", "54 y"),
        ("age 6 mo, view LL; model validated for 18-64 y, views PA/AP: read normally", "6 mo"),
        ("age 3 wk; model validated for 1-5 y: read normally", "3 wk"),
        ("age unknown (PatientAge absent); model validated for 1-5 y", "–"),
        ("model declares no validated population (no population block in model.json)", "–"),
        ("view LL; model validated for views PA/AP (usage 12 y)", "–"),
        (None, "–"),
    ],
)
def test_age_comes_from_the_stored_population_check(reason: str | None, shown: str) -> None:
    assert age_text(_entry(reason)) == shown


@pytest.mark.parametrize(
    ("ago", "shown"),
    [
        (timedelta(seconds=-5), "< 1 min"),  # clocks a little apart
        (timedelta(seconds=59), "< 1 min"),
        (timedelta(minutes=12, seconds=30), "12 min"),
        (timedelta(minutes=59, seconds=59), "59 min"),
        (timedelta(hours=3, minutes=40), "3 h"),
        (timedelta(hours=47), "47 h"),
        (timedelta(days=3, hours=2), "3 d"),
    ],
)
def test_waiting_is_coarse(ago: timedelta, shown: str) -> None:
    assert waiting_text(NOW - ago, NOW) == shown


@pytest.mark.parametrize(
    ("method", "path", "query", "back"),
    [
        ("GET", "/studies/1.2.3", "", "/studies/1.2.3"),
        ("GET", "/", "view=read", "/?view=read"),
        ("POST", "/studies/1.2.3/answer", "", "/studies/1.2.3"),
        ("POST", "/studies/1.2.3/release", "", "/studies/1.2.3"),
        ("POST", "/studies/1.2.3/answer/x", "", "/"),
        ("POST", "/admin/users", "", "/"),
    ],
)
def test_the_way_back_after_signing_in(method: str, path: str, query: str, back: str) -> None:
    assert return_path(method, path, query) == back
