"""Worklist SQL, study status and idempotent writes against a real Postgres."""

from __future__ import annotations

from itertools import combinations

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import IntegrityError, StatementError

from cxr_db.instances import reads as instance_reads
from cxr_db.instances import writes as repo
from cxr_db.instances.statuses import STUDY_STATUS_PRECEDENCE, InstanceStatus, StatusReason
from cxr_db.instances.tables import Instance
from cxr_db.worklist import reads
from tests.db_rows import prediction, record
from worker.outcomes import JobOutcome

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
    (entry,) = reads.worklist(engine)
    assert entry.flagged is True
    assert entry.score == pytest.approx(0.9)
    assert entry.instances == 2
    assert entry.status is InstanceStatus.DONE


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
    order = [e.accession_number for e in reads.worklist(engine)]
    assert order == ["HIGH", "FAILED", "PENDING", "MID", "LOW"]
    assert [e.accession_number for e in reads.worklist(engine, limit=2)] == ["HIGH", "FAILED"]
    entries = {e.accession_number: e for e in reads.worklist(engine)}
    assert entries["FAILED"].status is InstanceStatus.FAILED
    assert entries["FAILED"].reasons == (
        StatusReason(InstanceStatus.FAILED, "pixel data could not be decoded: broken J2K"),
    )
    assert entries["PENDING"].status is InstanceStatus.RECEIVED
    assert entries["PENDING"].reasons == ()
    assert pending > 0


def test_a_failed_sibling_is_visible_on_a_scored_study(engine: Engine) -> None:
    ok = _record(engine, "1.4.1", "1.4.1.1", "MIXED")
    repo.record_prediction(engine, ok, _prediction(0.3))
    bad = _record(engine, "1.4.1", "1.4.1.2")
    repo.record_not_eligible(engine, bad, "lateral view (ViewPosition LL) is not scored")
    (entry,) = reads.worklist(engine)
    assert entry.status is InstanceStatus.DONE
    assert entry.reasons == (
        StatusReason(InstanceStatus.NOT_ELIGIBLE, "lateral view (ViewPosition LL) is not scored"),
    )


def test_a_final_instance_is_not_claimed_again(engine: Engine) -> None:
    inst = _record(engine, "1.5.1", "1.5.1.1")
    assert repo.start_processing(engine, inst, "1.5.1.9") is None  # id of another instance
    assert repo.start_processing(engine, inst, "1.5.1.1") is not None
    repo.record_prediction(engine, inst, _prediction(0.7))
    assert repo.start_processing(engine, inst, "1.5.1.1") is None
    repo.record_failed(engine, inst, "late failure must not overwrite a result")
    assert instance_reads.instance_statuses(engine) == {"1.5.1.1": InstanceStatus.DONE}


def test_reasons_are_data_distinct_and_failed_first(engine: Engine) -> None:
    study = "1.6.1"
    for n, (write, why) in enumerate(
        [
            (repo.record_not_eligible, "lateral view"),
            (repo.record_failed, "truncated stream"),
            (repo.record_not_eligible, "lateral view"),  # same reason twice: shown once
            (repo.record_not_eligible, "not a chest radiograph"),
        ],
        1,
    ):
        write(engine, _record(engine, study, f"{study}.{n}"), why)
    (entry,) = reads.worklist(engine)
    assert entry.status is InstanceStatus.FAILED
    assert entry.reasons == (
        StatusReason(InstanceStatus.FAILED, "truncated stream"),
        StatusReason(InstanceStatus.NOT_ELIGIBLE, "lateral view"),
        StatusReason(InstanceStatus.NOT_ELIGIBLE, "not a chest radiograph"),
    )
    detail = reads.study_detail(engine, study)
    assert detail is not None
    assert detail.study == entry
    assert len(detail.instances) == 4


def _put_in(engine: Engine, study: str, sop: str, status: InstanceStatus) -> None:
    """One instance of ``study`` brought to ``status`` through the real write path."""
    inst = _record(engine, study, sop)
    if status is InstanceStatus.RECEIVED:
        return
    repo.mark_enqueued(engine, inst)
    if status is InstanceStatus.QUEUED:
        return
    assert repo.start_processing(engine, inst, sop) is not None
    if status is InstanceStatus.DONE:
        repo.record_prediction(engine, inst, _prediction(0.2))
    elif status is InstanceStatus.FAILED:
        repo.record_failed(engine, inst, "broken")
    elif status is InstanceStatus.NOT_ELIGIBLE:
        repo.record_not_eligible(engine, inst, "lateral")


S = InstanceStatus


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({S.PROCESSING, S.QUEUED, S.RECEIVED, S.DONE}, S.PROCESSING),
        ({S.QUEUED, S.RECEIVED}, S.QUEUED),
        ({S.RECEIVED, S.DONE, S.FAILED}, S.RECEIVED),
        ({S.DONE, S.FAILED, S.NOT_ELIGIBLE}, S.DONE),
        ({S.FAILED, S.NOT_ELIGIBLE}, S.FAILED),
        ({S.NOT_ELIGIBLE}, S.NOT_ELIGIBLE),
    ],
)
def test_study_status_precedence_by_hand(
    engine: Engine, statuses: set[InstanceStatus], expected: InstanceStatus
) -> None:
    """The precedence itself, written out: pending beats final, scored beats failed,
    failed beats not eligible."""
    for n, status in enumerate(sorted(statuses)):
        _put_in(engine, "1.7.1", f"1.7.1.{n}", status)
    (entry,) = reads.worklist(engine)
    assert entry.status is expected


def test_study_status_is_the_first_in_precedence_for_every_mix(engine: Engine) -> None:
    """Every non-empty set of instance statuses, one study each, through the one SQL
    expression; the worklist and the study page agree."""
    expected: dict[str, InstanceStatus] = {}
    written: dict[str, set[InstanceStatus]] = {}
    mixes = [
        set(mix)
        for k in range(1, len(InstanceStatus) + 1)
        for mix in combinations(InstanceStatus, k)
    ]
    for n, mix in enumerate(mixes):
        study = f"1.8.{n}"
        for m, status in enumerate(sorted(mix)):
            _put_in(engine, study, f"{study}.{m}", status)
        expected[study] = next(s for s in STUDY_STATUS_PRECEDENCE if s in mix)
        written[study] = mix
    assert len(expected) == 2 ** len(InstanceStatus) - 1
    got = {e.study_instance_uid: e.status for e in reads.worklist(engine)}
    assert got == expected
    for study, status in expected.items():
        detail = reads.study_detail(engine, study)
        assert detail is not None
        assert detail.study.status is status
        assert {i.status for i in detail.instances} == written[study]


@pytest.mark.parametrize("outcome", [JobOutcome.SKIPPED, JobOutcome.INVALID])
def test_a_job_outcome_that_is_no_instance_status_cannot_be_written(
    engine: Engine, outcome: JobOutcome
) -> None:
    inst = _record(engine, "1.9.1", "1.9.1.1")
    with pytest.raises(ValueError, match=outcome.value):
        InstanceStatus(outcome)
    with pytest.raises(StatementError), engine.begin() as conn:  # the column type refuses
        conn.execute(update(Instance).where(Instance.id == inst).values(status=outcome.value))
    raw = text("UPDATE instances SET status = :s WHERE id = :id")  # bypasses the type
    with pytest.raises(IntegrityError, match="instances_status_valid"), engine.begin() as conn:
        conn.execute(raw, {"s": outcome.value, "id": inst})  # and the database refuses it
    assert instance_reads.instance_statuses(engine) == {"1.9.1.1": InstanceStatus.RECEIVED}
