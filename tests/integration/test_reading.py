"""Claims, answers and the answers export on real Postgres. Claim expiry is checked by
passing ``now=``, never by waiting."""

from __future__ import annotations

import argparse
import csv
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.errors import (
    InvalidAnswerError,
    StudyAlreadyReadError,
    StudyClaimedError,
    StudyNotFoundError,
)
from cxr_db.reading import store as reading
from cxr_db.reading.store import Reader
from cxr_db.reading.tables import Answer, Finding, ReadState
from cxr_triage import accounts_cli
from tests.integration.reading_rows import (
    ADMIN,
    add_user,
    audit_after,
    audit_mark,
    clean,
    db_now,
    scored_study,
)

pytestmark = pytest.mark.integration

TIMEOUT = timedelta(minutes=15)
STUDY = "1.2.826.0.1.7.1"


@pytest.fixture
def db(engine: Engine) -> Engine:
    return clean(engine)


@pytest.fixture
def two_readers(db: Engine) -> tuple[accounts.UserInfo, accounts.UserInfo]:
    return add_user(db, "ann"), add_user(db, "ben")


def _answers(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Answer)).scalar_one())


def test_an_unknown_study_has_no_state_and_a_new_one_is_unread(db: Engine) -> None:
    scored_study(db, STUDY, [0.8])
    info = reading.read_state(db, STUDY)
    assert (info.state, info.claimed_by, info.read_by, info.finding) == (
        ReadState.UNREAD,
        None,
        None,
        None,
    )
    assert reading.reads_for(db, [STUDY, "9.9.9"]).keys() == {STUDY}
    with pytest.raises(StudyNotFoundError):
        reading.read_state(db, "9.9.9")


def test_claim_shows_in_progress_to_others_and_expires(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, ben = two_readers
    scored_study(db, STUDY, [0.8])
    t0 = db_now(db)
    mark = audit_mark(db)
    mine = reading.claim_study(db, STUDY, ann, timeout=TIMEOUT, now=t0, client_addr="10.1.1.1")
    assert mine.claimed
    assert mine.read.state is ReadState.IN_PROGRESS
    assert mine.read.claimed_by == "ann"
    assert mine.read.claim_expires_at == t0 + TIMEOUT

    theirs = reading.claim_study(db, STUDY, ben, timeout=TIMEOUT, now=t0 + timedelta(minutes=5))
    assert not theirs.claimed
    assert (theirs.read.state, theirs.read.claimed_by) == (ReadState.IN_PROGRESS, "ann")
    view = reading.reads_for(db, [STUDY], now=t0 + timedelta(minutes=5))[STUDY]
    assert view.as_json()["read_state"] == "in_progress"
    assert view.claimed_by == "ann"

    # Ann renews her own claim; it then outlives the first deadline.
    renewed = reading.claim_study(db, STUDY, ann, timeout=TIMEOUT, now=t0 + timedelta(minutes=10))
    assert renewed.claimed
    assert renewed.read.claim_expires_at == t0 + timedelta(minutes=25)
    blocked = reading.claim_study(db, STUDY, ben, timeout=TIMEOUT, now=t0 + timedelta(minutes=20))
    assert not blocked.claimed

    # Expired: the study reads as unread to everyone, and Ben may take it.
    after = t0 + timedelta(minutes=25)
    assert reading.read_state(db, STUDY, now=after).state is ReadState.UNREAD
    assert reading.read_state(db, STUDY, now=after).claimed_by is None
    taken = reading.claim_study(db, STUDY, ben, timeout=TIMEOUT, now=after)
    assert taken.claimed
    assert taken.read.claimed_by == "ben"
    entries = audit_after(db, mark)
    assert [(e.action, e.actor) for e in entries] == [
        ("study_claim", "ann"),
        ("study_claim", "ann"),
        ("study_claim", "ben"),
    ]
    assert entries[0].target == STUDY
    assert entries[0].client_addr == "10.1.1.1"


def test_release_gives_the_study_back_only_by_its_holder(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, ben = two_readers
    scored_study(db, STUDY, [0.3])
    assert reading.claim_study(db, STUDY, ann).claimed
    assert not reading.release_study(db, STUDY, ben)
    assert reading.read_state(db, STUDY).claimed_by == "ann"
    mark = audit_mark(db)
    assert reading.release_study(db, STUDY, ann)
    assert reading.read_state(db, STUDY).state is ReadState.UNREAD
    assert [e.action for e in audit_after(db, mark)] == ["study_release"]
    assert reading.claim_study(db, STUDY, ben).claimed


def test_disabling_a_user_releases_their_claims(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, ben = two_readers
    scored_study(db, STUDY, [0.3])
    assert reading.claim_study(db, STUDY, ann).claimed
    accounts.disable_user(db, "ann", actor=ADMIN)
    assert reading.read_state(db, STUDY).state is ReadState.UNREAD
    assert reading.claim_study(db, STUDY, ben).claimed


def test_an_answer_marks_the_study_read_with_what_the_reader_saw(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, ben = two_readers
    scored_study(db, STUDY, [0.35, 0.8], version="v7")
    assert reading.claim_study(db, STUDY, ann).claimed
    with pytest.raises(StudyClaimedError, match="in progress by ann"):
        reading.record_answer(db, STUDY, Reader.from_user(ben), Finding.NO_PNEUMONIA)
    mark = audit_mark(db)
    note = "Patient Doe: left lower lobe consolidation"
    answer = reading.record_answer(
        db,
        STUDY,
        Reader.from_user(ann),
        "pneumonia",
        note=f"  {note}  ",
        model_version="v7",
        score=0.8,
        client_addr="10.1.1.2",
    )
    assert (answer.finding, answer.note, answer.model_version, answer.score) == (
        Finding.PNEUMONIA,
        note,
        "v7",
        0.8,
    )
    info = reading.read_state(db, STUDY)
    assert (info.state, info.read_by, info.finding, info.claimed_by) == (
        ReadState.READ,
        "ann",
        Finding.PNEUMONIA,
        None,
    )
    assert info.read_at == answer.created_at
    (entry,) = audit_after(db, mark)
    assert (entry.action, entry.actor, entry.target, entry.client_addr) == (
        "answer",
        "ann",
        STUDY,
        "10.1.1.2",
    )
    assert entry.detail == {
        "answer_id": answer.id,
        "finding": "pneumonia",
        "model_version": "v7",
        "score": 0.8,
        "score_used_for_triage": True,
    }
    assert "Doe" not in repr(entry)  # the note never reaches the audit log

    # Read is final here: a second answer is refused, and nobody can claim it.
    with pytest.raises(StudyAlreadyReadError, match="already read by ann"):
        reading.record_answer(db, STUDY, Reader.from_user(ben), Finding.OTHER)
    assert not reading.claim_study(db, STUDY, ben).claimed
    assert _answers(db) == 1


def test_answer_without_a_claim_and_defaults_to_the_current_model_output(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, ben = two_readers
    scored_study(db, STUDY, [0.2, 0.6], version="v9")
    t0 = db_now(db)
    assert reading.claim_study(db, STUDY, ann, timeout=TIMEOUT, now=t0).claimed
    # Ann's claim has expired: Ben answers directly, without claiming first.
    answer = reading.record_answer(
        db, STUDY, Reader.from_user(ben), Finding.NO_PNEUMONIA, now=t0 + TIMEOUT
    )
    assert answer.model_version == "v9"
    assert answer.score == pytest.approx(0.6)
    assert reading.read_state(db, STUDY).read_by == "ben"


def test_an_integration_token_can_answer(db: Engine) -> None:
    scored_study(db, STUDY, [0.9])
    token = accounts.create_token(db, "ris", Role.RADIOLOGIST, actor=ADMIN)
    info = accounts.verify_token(db, token.token)
    assert info is not None
    mark = audit_mark(db)
    reading.record_answer(db, STUDY, Reader.from_token(info), Finding.PNEUMONIA)
    read = reading.read_state(db, STUDY)
    assert (read.state, read.read_by) == (ReadState.READ, "ris")
    (entry,) = audit_after(db, mark)
    assert (entry.actor, entry.actor_kind) == ("ris", "token")


def test_bad_answers_are_refused_with_the_field_named(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    ann, _ = two_readers
    scored_study(db, STUDY, [0.5])
    reader = Reader.from_user(ann)
    with pytest.raises(InvalidAnswerError, match="finding must be one of"):
        reading.record_answer(db, STUDY, reader, "maybe")
    with pytest.raises(InvalidAnswerError, match="score"):
        reading.record_answer(db, STUDY, reader, Finding.OTHER, score=1.5)
    with pytest.raises(InvalidAnswerError, match="score"):
        reading.record_answer(db, STUDY, reader, Finding.OTHER, score=float("nan"))
    with pytest.raises(InvalidAnswerError, match="note"):
        reading.record_answer(db, STUDY, reader, Finding.OTHER, note="x" * 5000)
    with pytest.raises(StudyNotFoundError):
        reading.record_answer(db, "9.9.9", reader, Finding.OTHER)
    assert _answers(db) == 0
    assert reading.read_state(db, STUDY).state is ReadState.UNREAD


def test_a_failing_answer_leaves_no_answer_and_no_audit_row(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    """The last write of ``record_answer`` (marking the study read) fails after the answer
    and its audit row were written: all three roll back together."""
    ann, _ = two_readers
    scored_study(db, STUDY, [0.7])
    with db.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION test_refuse_read() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'test: marking read fails'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER test_refuse_read BEFORE UPDATE ON study_reads FOR EACH ROW "
                "WHEN (NEW.state = 'read') EXECUTE FUNCTION test_refuse_read()"
            )
        )
    mark = audit_mark(db)
    try:
        with pytest.raises(Exception, match="marking read fails"):
            reading.record_answer(db, STUDY, Reader.from_user(ann), Finding.PNEUMONIA)
    finally:
        with db.begin() as conn:
            conn.execute(text("DROP TRIGGER test_refuse_read ON study_reads"))
            conn.execute(text("DROP FUNCTION test_refuse_read()"))
    assert _answers(db) == 0
    assert audit_after(db, mark) == []
    assert reading.read_state(db, STUDY).state is ReadState.UNREAD
    # Without the fault the same answer goes through, with its audit row.
    reading.record_answer(db, STUDY, Reader.from_user(ann), Finding.PNEUMONIA)
    assert _answers(db) == 1
    assert [e.action for e in audit_after(db, mark)] == ["answer"]


def _uris(folder: Path, study: str, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = folder / f"{study}.{i + 1}.dcm"
        path.write_bytes(b"DICM")
        paths.append(path.as_uri())
    return paths


def test_answers_export_is_a_labels_csv_the_training_loader_reads(
    db: Engine,
    two_readers: tuple[accounts.UserInfo, accounts.UserInfo],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.data import load_samples

    ann, ben = two_readers
    store = tmp_path / "stored instances"  # a space: URIs are percent-encoded
    store.mkdir()
    pneumonia = _uris(store, "1.2.3.1", 2)
    normal = _uris(store, "1.2.3.2", 1)
    scored_study(db, "1.2.3.1", [0.9, 0.4], pneumonia, version="v2")
    scored_study(db, "1.2.3.2", [0.1], normal, version="v2")
    scored_study(db, "1.2.3.3", [0.5], _uris(store, "1.2.3.3", 1))  # answered "other"
    scored_study(db, "1.2.3.4", [0.6], _uris(store, "1.2.3.4", 1))  # never read
    reading.record_answer(db, "1.2.3.1", Reader.from_user(ann), Finding.PNEUMONIA)
    reading.record_answer(db, "1.2.3.2", Reader.from_user(ben), Finding.NO_PNEUMONIA)
    reading.record_answer(db, "1.2.3.3", Reader.from_user(ann), Finding.OTHER)

    out = tmp_path / "labels.csv"
    mark = audit_mark(db)
    assert accounts_cli.answers_export(db, argparse.Namespace(out=out)) == 0
    printed = capsys.readouterr().out
    assert "3 scored instances of 2 read studies" in printed
    assert "1 studies answered 'other' left out" in printed

    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == reading.LABELS_COLUMNS
    assert [(r["sop_instance_uid"], r["label"], r["finding"], r["read_by"]) for r in rows] == [
        ("1.2.3.1.1", "1", "pneumonia", "ann"),
        ("1.2.3.1.2", "1", "pneumonia", "ann"),
        ("1.2.3.2.1", "0", "no_pneumonia", "ben"),
    ]
    assert [float(r["score"]) for r in rows] == pytest.approx([0.9, 0.4, 0.1])
    assert {r["model_version"] for r in rows} == {"v2"}

    samples = load_samples(out)
    assert [(s.path, s.label) for s in samples] == [
        (store / "1.2.3.1.1.dcm", 1),
        (store / "1.2.3.1.2.dcm", 1),
        (store / "1.2.3.2.1.dcm", 0),
    ]
    assert all(s.path.is_file() for s in samples)
    (entry,) = audit_after(db, mark)
    assert entry.action == "answers_export"
    assert entry.detail == {"rows": 3, "studies": 2, "studies_other": 1}


def test_answers_export_prefers_the_prediction_of_the_version_the_reader_saw(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo], tmp_path: Path
) -> None:
    from cxr_db.instances import writes as repo
    from tests.db_rows import prediction

    ann, _ = two_readers
    (instance_id,) = scored_study(db, STUDY, [0.7], version="v1")
    reading.record_answer(db, STUDY, Reader.from_user(ann), Finding.PNEUMONIA)
    repo.record_prediction(db, instance_id, prediction(0.2, version="v2"))  # rescored later
    (row,) = list(reading.iter_label_rows(db))
    assert row.model_version == "v1"
    assert row.score == pytest.approx(0.7)


def _outside_study(db: Engine, study: str, p: float, uri: str | None = None) -> int:
    """One instance the active model (v1) scored outside the validated population."""
    from cxr_db.instances import writes as repo
    from tests.db_rows import prediction

    rec = repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=f"{study}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        series_instance_uid=None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        accession_number=None,
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        calling_ae_title="TEST",
        storage_uri=uri or f"file:///nowhere/{study}.1.dcm",
        size_bytes=1,
    )
    instance_id = repo.record_instance(db, rec).instance_id
    repo.record_prediction(
        db,
        instance_id,
        prediction(p),
        triage=False,
        population=repo.PopulationNote("outside", "age 60 y; model validated for 1-5 y"),
    )
    return instance_id


def test_what_the_reader_saw_and_the_export_never_take_a_shadow_models_prediction(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo], tmp_path: Path
) -> None:
    from cxr_db.instances import writes as repo
    from tests.db_rows import prediction

    ann, _ = two_readers
    (instance_id,) = scored_study(db, STUDY, [0.7], _uris(tmp_path, STUDY, 1), version="v1")
    # a shadow model scores the same instance later, higher: never what the reader saw
    repo.record_shadow_prediction(db, instance_id, prediction(0.95, version="v2-shadow"))
    answer = reading.record_answer(db, STUDY, Reader.from_user(ann), Finding.PNEUMONIA)
    assert (answer.model_version, answer.score) == ("v1", pytest.approx(0.7))
    (row,) = list(reading.iter_label_rows(db))
    assert (row.model_version, row.score) == ("v1", pytest.approx(0.7))


def test_an_outside_population_answer_keeps_the_shadow_score_apart_from_triage(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo], tmp_path: Path
) -> None:
    ann, _ = two_readers
    (uri,) = _uris(tmp_path, STUDY, 1)
    _outside_study(db, STUDY, 0.057, uri)
    mark = audit_mark(db)
    answer = reading.record_answer(db, STUDY, Reader.from_user(ann), Finding.PNEUMONIA)
    # answers.score is a triage score only: none triaged here
    assert (answer.model_version, answer.score) == ("v1", None)
    (entry,) = audit_after(db, mark)
    assert entry.detail["score_used_for_triage"] is False
    assert entry.detail["shadow_score"] == pytest.approx(0.057)
    # the export carries the active model's shadow score: evidence for `validate`
    (row,) = list(reading.iter_label_rows(db))
    assert (row.label, row.model_version, row.score) == (1, "v1", pytest.approx(0.057))


def test_two_readers_claiming_at_once_get_one_claim(
    db: Engine, two_readers: tuple[accounts.UserInfo, accounts.UserInfo]
) -> None:
    import threading

    ann, ben = two_readers
    scored_study(db, STUDY, [0.9])
    start = threading.Barrier(2)
    results: dict[str, bool] = {}

    def claim(user: accounts.UserInfo) -> None:
        start.wait()
        results[user.username] = reading.claim_study(db, STUDY, user).claimed

    threads = [threading.Thread(target=claim, args=(u,)) for u in (ann, ben)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(name for name, won in results.items() if won)
    assert reading.read_state(db, STUDY).claimed_by == winner
