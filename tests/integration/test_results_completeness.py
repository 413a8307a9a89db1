"""Study completeness decided by Postgres: quiet period, pending instances, reopening with a
new result version, one completion per study across concurrent processes, re-enqueueing
what was completed but never enqueued, and send bookkeeping (idempotency, state)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text

from cxr_db.instances import writes as repo
from cxr_db.results import store as results_db
from cxr_db.results.states import ResultState, SendStatus
from cxr_db.worklist.reads import worklist
from tests.db_rows import prediction, record
from worklist.present import entry_json

pytestmark = pytest.mark.integration


def _age(engine: Engine, seconds: float) -> None:
    """Move every study's last instance ``seconds`` into the past (the quiet period)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE studies SET last_instance_at = now() - make_interval(secs => :s)"),
            {"s": seconds},
        )


def _state(engine: Engine, study: str) -> tuple[ResultState, int]:
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT result_state, result_version FROM studies WHERE study_instance_uid = :u"),
            {"u": study},
        ).one()
    return ResultState(row.result_state), row.result_version


def test_a_study_is_complete_after_the_quiet_period_with_nothing_pending(engine: Engine) -> None:
    scored = record(engine, "1.2.3.1", "1.2.3.1.1")
    repo.record_prediction(engine, scored, prediction(0.7))
    pending = record(engine, "1.2.3.2", "1.2.3.2.1")  # received, never scored
    assert _state(engine, "1.2.3.1") == (ResultState.RECEIVING, 1)

    assert results_db.complete_quiet_studies(engine, quiet_s=30) == []  # not quiet yet
    _age(engine, 60)
    done = results_db.complete_quiet_studies(engine, quiet_s=30)
    assert [(s.study_instance_uid, s.result_version) for s in done] == [("1.2.3.1", 1)]
    assert _state(engine, "1.2.3.1") == (ResultState.COMPLETE, 1)
    assert _state(engine, "1.2.3.2") == (ResultState.RECEIVING, 1)  # an instance is pending
    assert results_db.complete_quiet_studies(engine, quiet_s=30) == []  # once only

    repo.record_not_eligible(engine, pending, "modality CT is not a chest radiograph")
    done = results_db.complete_quiet_studies(engine, quiet_s=30)
    assert [s.study_instance_uid for s in done] == ["1.2.3.2"]


def test_a_late_instance_reopens_the_study_with_a_new_version(engine: Engine) -> None:
    first = record(engine, "1.2.4", "1.2.4.1")
    repo.record_prediction(engine, first, prediction(0.9))
    _age(engine, 60)
    (study,) = results_db.complete_quiet_studies(engine, quiet_s=1)
    assert results_db.set_result_state(engine, study.study_id, 1, ResultState.RESULTS_SENT)

    record(engine, "1.2.4", "1.2.4.1")  # a resend of a known instance changes nothing
    assert _state(engine, "1.2.4") == (ResultState.RESULTS_SENT, 1)
    late = record(engine, "1.2.4", "1.2.4.2")
    assert _state(engine, "1.2.4") == (ResultState.RECEIVING, 2)
    # the old version's job may no longer mark the reopened study
    assert not results_db.set_result_state(engine, study.study_id, 1, ResultState.RESULTS_SENT)
    repo.record_prediction(engine, late, prediction(0.2))  # lower: priority never goes down
    _age(engine, 60)
    (again,) = results_db.complete_quiet_studies(engine, quiet_s=1)
    assert again.result_version == 2
    (entry,) = worklist(engine)
    assert entry.score == pytest.approx(0.9)
    assert entry.flagged


def test_concurrent_passes_complete_each_study_exactly_once(engine: Engine) -> None:
    for i in range(60):
        instance = record(engine, f"1.2.5.{i}", f"1.2.5.{i}.1")
        repo.record_not_eligible(engine, instance, "not a chest radiograph")
    _age(engine, 60)
    got: list[list[results_db.CompletedStudy]] = []
    barrier = threading.Barrier(4)

    def one_pass() -> None:
        barrier.wait()
        got.append(results_db.complete_quiet_studies(engine, quiet_s=1, limit=20))

    while True:
        threads = [threading.Thread(target=one_pass) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not any(got[-4:]):
            break
    ids = [s.study_id for batch in got for s in batch]
    assert len(ids) == len(set(ids)) == 60


def test_completed_but_never_enqueued_studies_are_picked_up_once(engine: Engine) -> None:
    instance = record(engine, "1.2.6", "1.2.6.1")
    repo.record_prediction(engine, instance, prediction(0.4))
    _age(engine, 60)
    (study,) = results_db.complete_quiet_studies(engine, quiet_s=1)
    # the broker was down: no mark_results_enqueued
    assert results_db.unenqueued_complete_studies(engine, older_than_s=30) == []  # grace
    with engine.begin() as conn:
        conn.execute(text("UPDATE studies SET completed_at = now() - interval '1 minute'"))
    assert results_db.unenqueued_complete_studies(engine, older_than_s=30) == [study]
    assert results_db.unenqueued_complete_studies(engine, older_than_s=30) == []  # touched
    results_db.mark_results_enqueued(engine, study)
    with engine.begin() as conn:
        conn.execute(text("UPDATE studies SET completed_at = now() - interval '1 minute'"))
    assert results_db.unenqueued_complete_studies(engine, older_than_s=30) == []


def _attempt(
    study_id: int, status: SendStatus, destination: str = "PACS@h:104"
) -> results_db.Attempt:
    return results_db.Attempt(
        study_id=study_id,
        result_version=1,
        destination=destination,
        status=status,
        sc_sop_instance_uid="2.25.1",
        sr_sop_instance_uid="2.25.2",
        sc_status=0 if status is SendStatus.SENT else None,
        sr_status=0 if status is SendStatus.SENT else None,
        error=None if status is SendStatus.SENT else "no answer",
    )


def test_sends_are_numbered_locked_and_sent_once(engine: Engine) -> None:
    record(engine, "1.2.7", "1.2.7.1")
    with engine.begin() as conn:
        study_id = conn.execute(text("SELECT id FROM studies")).scalar_one()
    with results_db.send_lock(engine, study_id, 1, "PACS@h:104") as conn:
        assert conn is not None
        with results_db.send_lock(engine, study_id, 1, "PACS@h:104") as other:
            assert other is None  # held by the first: another process is sending
        with results_db.send_lock(engine, study_id, 1, "ARCHIVE@h:104") as other:
            assert other is not None  # another destination is independent
        assert not results_db.already_sent(conn, study_id, 1, "PACS@h:104")
        assert results_db.record_attempt(conn, _attempt(study_id, SendStatus.FAILED)) == 1
        assert results_db.record_attempt(conn, _attempt(study_id, SendStatus.SENT)) == 2
        assert results_db.already_sent(conn, study_id, 1, "PACS@h:104")
    with pytest.raises(Exception, match="uq_result_sends_sent"), engine.begin() as conn:
        results_db.record_attempt(conn, _attempt(study_id, SendStatus.SENT))
    assert results_db.sent_destinations(engine, study_id, 1) == {"PACS@h:104"}

    (entry,) = worklist(engine)
    results = entry_json(entry)["results"]
    assert results == {
        "state": "receiving",
        "result_version": 1,
        "destinations": [
            {
                "destination": "PACS@h:104",
                "result_version": 1,
                "attempt": 2,
                "status": "sent",
                "at": results["destinations"][0]["at"],  # type: ignore[index]
                "error": None,
                "sc_sop_instance_uid": "2.25.1",
                "sr_sop_instance_uid": "2.25.2",
                "sc_status": "0x0000",
                "sr_status": "0x0000",
                "seg_sop_instance_uid": None,
                "seg_status": None,
            }
        ],
        "hl7": [],
    }


def test_upgrading_marks_existing_studies_complete_so_nothing_old_is_sent() -> None:
    """Revision 0005 on a database with studies: they are complete and "enqueued" (the
    completeness job never picks them up); a late instance still reopens one."""
    import os
    import uuid

    from alembic import command
    from sqlalchemy import create_engine

    from cxr_common.settings import normalise_database_url
    from migrations import alembic_config

    admin_url = os.environ.get("CXR_TEST_DATABASE_URL")
    if not admin_url:
        pytest.skip("needs CXR_TEST_DATABASE_URL (a server where a database can be created)")
    name = f"cxr_test_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_database_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalise_database_url(admin_url).rpartition("/")[0] + f"/{name}"
    engine = create_engine(url)
    try:
        command.upgrade(alembic_config(url), "0002")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO studies (study_instance_uid) VALUES ('1.2.9')"))
            conn.execute(
                text(
                    "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, "
                    "storage_uri, size_bytes, status) VALUES (1, '1.2.9.1', '1.2', 'file:///x', "
                    "1, 'done')"
                )
            )
        command.upgrade(alembic_config(url), "0005")
        assert _state(engine, "1.2.9") == (ResultState.COMPLETE, 1)
        _age(engine, 60)
        assert results_db.complete_quiet_studies(engine, quiet_s=1) == []
        with engine.begin() as conn:
            conn.execute(text("UPDATE studies SET completed_at = now() - interval '1 hour'"))
        assert results_db.unenqueued_complete_studies(engine, older_than_s=1) == []
        command.upgrade(alembic_config(url), "head")  # the ORM that records describes head
        record(engine, "1.2.9", "1.2.9.2")
        assert _state(engine, "1.2.9") == (ResultState.RECEIVING, 2)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
