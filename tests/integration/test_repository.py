"""Worklist SQL and idempotent writes against a real Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from cxr_db import repository as repo
from tests.db_rows import prediction, record

pytestmark = pytest.mark.integration


_record = record


def _prediction(p: float, threshold: float = 0.5, version: str = "v1") -> repo.PredictionRecord:
    return prediction(p, threshold=threshold, version=version)


def test_record_instance_is_idempotent(engine: Engine) -> None:
    a = _record(engine, "1.2.1", "1.2.1.1", "ACC1")
    b = _record(engine, "1.2.1", "1.2.1.1", "ACC1")
    assert a == b
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM instances")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar_one() == 1


def test_study_priority_never_goes_down_when_another_image_arrives(engine: Engine) -> None:
    first = _record(engine, "1.2.2", "1.2.2.1", "ACC2")
    repo.record_prediction(engine, first, _prediction(0.9))
    second = _record(engine, "1.2.2", "1.2.2.2")
    repo.record_prediction(engine, second, _prediction(0.1))
    (entry,) = repo.worklist(engine)
    assert entry.flagged is True
    assert entry.score == pytest.approx(0.9)
    assert entry.instances == 2
    assert entry.status == "done"


def test_rescoring_one_instance_upserts_instead_of_duplicating(engine: Engine) -> None:
    inst = _record(engine, "1.2.3", "1.2.3.1")
    repo.record_prediction(engine, inst, _prediction(0.2))
    repo.record_prediction(engine, inst, _prediction(0.3))
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT probability FROM predictions")).scalars().all()
    assert rows == [pytest.approx(0.3)]


def test_worklist_order_flagged_then_unscored_then_score_then_arrival(engine: Engine) -> None:
    low = _record(engine, "1.3.1", "1.3.1.1", "LOW")
    repo.record_prediction(engine, low, _prediction(0.1))
    failed = _record(engine, "1.3.2", "1.3.2.1", "FAILED")
    repo.record_failed(engine, failed, "pixel data could not be decoded: broken J2K")
    high = _record(engine, "1.3.3", "1.3.3.1", "HIGH")
    repo.record_prediction(engine, high, _prediction(0.95))
    mid = _record(engine, "1.3.4", "1.3.4.1", "MID")
    repo.record_prediction(engine, mid, _prediction(0.4))
    pending = _record(engine, "1.3.5", "1.3.5.1", "PENDING")
    order = [e.accession_number for e in repo.worklist(engine)]
    assert order == ["HIGH", "FAILED", "PENDING", "MID", "LOW"]
    entries = {e.accession_number: e for e in repo.worklist(engine)}
    assert entries["FAILED"].status == "failed"
    assert entries["FAILED"].reason is not None
    assert "broken J2K" in entries["FAILED"].reason
    assert entries["PENDING"].status == "received"
    assert pending > 0


def test_a_failed_sibling_is_visible_on_a_scored_study(engine: Engine) -> None:
    ok = _record(engine, "1.4.1", "1.4.1.1", "MIXED")
    repo.record_prediction(engine, ok, _prediction(0.3))
    bad = _record(engine, "1.4.1", "1.4.1.2")
    repo.record_not_eligible(engine, bad, "lateral view (ViewPosition LL) is not scored")
    (entry,) = repo.worklist(engine)
    assert entry.status == "done"
    assert entry.reason is not None
    assert "lateral" in entry.reason


def test_a_final_instance_is_not_claimed_again(engine: Engine) -> None:
    inst = _record(engine, "1.5.1", "1.5.1.1")
    assert repo.start_processing(engine, inst, "1.5.1.9") is None  # id of another instance
    assert repo.start_processing(engine, inst, "1.5.1.1") is not None
    repo.record_prediction(engine, inst, _prediction(0.7))
    assert repo.start_processing(engine, inst, "1.5.1.1") is None
    repo.record_failed(engine, inst, "late failure must not overwrite a result")
    assert repo.instance_statuses(engine) == {"1.5.1.1": "done"}
