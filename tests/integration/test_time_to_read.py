"""Time to read on real Postgres: studies with known arrival, score and answer times give
the stats (``cxr_db.reading.stats``), ``cxr-triage stats --json``, the ops page's block and
the ``/metrics`` histogram and gauges; plus results and sign-in metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from prometheus_client import generate_latest
from sqlalchemy import Engine, insert, text

from cxr_common.passwords import Passwords
from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.audit import store as audit
from cxr_db.audit.store import Actor, AuditEvent
from cxr_db.audit.tables import ActorKind, AuditAction
from cxr_db.instances import writes as repo
from cxr_db.reading import stats
from cxr_db.reading.tables import Answer, StudyRead
from cxr_db.results.tables import ResultSend
from cxr_triage.cli import main
from tests.conftest import Services
from tests.db_rows import prediction, record
from tests.integration.reading_rows import cheap_passwords, db_now
from tests.metrics_scrape import Scrape, parse
from tests.web_server import add_user, reset_accounts, serve, sign_in, web_config
from worklist.metrics_route import metrics_registry

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.10.919"


@dataclass(frozen=True)
class Seeded:
    now: datetime
    uids: dict[str, str]


def _study(
    engine: Engine,
    name: str,
    now: datetime,
    *,
    probability: float | None,
    arrived_ago: timedelta,
    scored_after: timedelta = timedelta(seconds=30),
    answered_after: timedelta | None = None,
    reader: int | None = None,
) -> str:
    uid = f"{ROOT}.{name}"
    instance_id = record(engine, uid, f"{uid}.1")
    arrival = now - arrived_ago
    if probability is None:
        repo.mark_enqueued(engine, instance_id)
    else:
        repo.record_prediction(engine, instance_id, prediction(probability))
    with engine.begin() as conn:
        params = {"t": arrival, "s": arrival + scored_after, "id": instance_id}
        conn.execute(text("UPDATE instances SET received_at = :t WHERE id = :id"), params)
        conn.execute(
            text(
                "UPDATE studies SET first_received_at = :t FROM instances i "
                "WHERE i.id = :id AND studies.id = i.study_id"
            ),
            params,
        )
        conn.execute(text("UPDATE predictions SET created_at = :s WHERE instance_id = :id"), params)
        if answered_after is not None:
            study_id = conn.execute(
                text("SELECT study_id FROM instances WHERE id = :id"), params
            ).scalar_one()
            at = arrival + answered_after
            conn.execute(
                insert(Answer).values(
                    study_id=study_id, user_id=reader, finding="pneumonia", created_at=at
                )
            )
            conn.execute(
                insert(StudyRead).values(
                    study_id=study_id, state="read", read_by=reader, read_at=at
                )
            )
    return uid


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def seeded(db: Engine) -> Seeded:
    """Flagged read in 10 min (3 h ago), not flagged read in 2 h, flagged unread for 2 h,
    flagged read in 30 min three days ago, flagged arrived 10 min ago (not due yet), and one
    still waiting for its score (20 min)."""
    now = db_now(db)
    reader = add_user(db, "rita").id
    h = timedelta(hours=1)
    uids = {
        "a": _study(
            db, "1", now, probability=0.9, arrived_ago=3 * h,
            answered_after=timedelta(minutes=10), reader=reader,
        ),
        "b": _study(
            db, "2", now, probability=0.1, arrived_ago=5 * h,
            scored_after=timedelta(seconds=90), answered_after=2 * h, reader=reader,
        ),
        "c": _study(
            db, "3", now, probability=0.8, arrived_ago=2 * h, scored_after=timedelta(seconds=60)
        ),
        "d": _study(
            db, "4", now, probability=0.95, arrived_ago=timedelta(days=3),
            answered_after=timedelta(minutes=30), reader=reader,
        ),
        "e": _study(
            db, "5", now, probability=0.7, arrived_ago=timedelta(minutes=10),
            scored_after=timedelta(seconds=60),
        ),
        "f": _study(db, "6", now, probability=None, arrived_ago=timedelta(minutes=20)),
    }  # fmt: skip
    return Seeded(now, uids)


def _check_24h(window: dict[str, object]) -> None:
    flagged = window["flagged"]
    not_flagged = window["not_flagged"]
    assert isinstance(flagged, dict)
    assert isinstance(not_flagged, dict)
    assert flagged["studies"] == 3  # a, c, e
    assert flagged["read"] == 1
    assert flagged["read_p50_s"] == pytest.approx(600)
    assert flagged["read_p95_s"] == pytest.approx(600)
    assert flagged["scored"] == 3
    assert flagged["score_p50_s"] == pytest.approx(60)  # 30, 60, 60
    assert flagged["score_p95_s"] == pytest.approx(60)
    assert not_flagged["studies"] == 2  # b and the unscored f
    assert not_flagged["read"] == 1
    assert not_flagged["read_p50_s"] == pytest.approx(7200)
    assert not_flagged["scored"] == 1
    assert not_flagged["score_p50_s"] == pytest.approx(90)
    # due: a (read) and c (unread for 2 h > 1 h); e arrived 10 min ago and is not due
    assert window["flagged_due"] == 2
    assert window["flagged_read_within_target"] == 1
    assert window["share_within_target"] == pytest.approx(0.5)


def test_read_stats_by_window_flagged_and_not(db: Engine, seeded: Seeded) -> None:
    day, week = stats.read_stats(db, target_s=3600)
    _check_24h(day.as_json())
    assert week.flagged.studies == 4
    assert week.flagged.read == 2
    assert week.flagged.read_p50_s == pytest.approx(1200)  # 600 and 1800
    assert week.flagged.read_p95_s == pytest.approx(1740)  # linear interpolation
    assert (week.flagged_read_within_target, week.flagged_due) == (2, 3)
    # a tighter target: the 30-minute read no longer counts
    (strict,) = stats.read_stats(db, [("7d", 7 * 86400)], target_s=900)
    # a 15-minute target: d's 30-minute read misses it; e (10 min) is still not due
    assert (strict.flagged_read_within_target, strict.flagged_due) == (1, 3)
    assert strict.table_rows()[0][-1] == "33% (1/3)"


def test_first_opened_comes_from_the_audit_log(db: Engine, seeded: Seeded) -> None:
    viewer = Actor("user:rita", ActorKind.USER)
    audit.record(db, AuditEvent(AuditAction.STUDY_VIEW, viewer, seeded.uids["c"]))
    audit.record(db, AuditEvent(AuditAction.STUDY_VIEW, viewer, seeded.uids["c"]))
    times = stats.study_times()
    with db.connect() as conn:
        rows = {r.study_id: r for r in conn.execute(times.select())}
        uid_of: dict[int, str] = dict(
            conn.execute(text("SELECT id, study_instance_uid FROM studies")).all()
        )
    opened = {uid_of[k]: r.opened_at for k, r in rows.items()}
    assert opened[seeded.uids["c"]] is not None
    assert opened[seeded.uids["c"]] >= seeded.now
    assert opened[seeded.uids["e"]] is None
    answered = {uid_of[k]: r.answered_at for k, r in rows.items()}
    assert answered[seeded.uids["a"]] == seeded.now - timedelta(hours=3) + timedelta(minutes=10)


def test_stats_command_json_and_table(
    db: Engine,
    seeded: Seeded,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in services.env().items():
        if name.startswith("CXR_"):
            monkeypatch.setenv(name, value)
    assert main(["stats", "--json"]) == 0
    day, week = json.loads(capsys.readouterr().out)
    assert (day["label"], week["label"]) == ("24h", "7d")
    assert day["target_s"] == 3600
    _check_24h(day)
    assert week["flagged"]["read"] == 2

    monkeypatch.setenv("CXR_READ_TARGET_S", "900")
    assert main(["stats", "--since", "4d"]) == 0
    out = capsys.readouterr().out
    assert "4d" in out
    assert "flagged" in out
    assert "not flagged" in out
    assert "33% (1/3)" in out  # d read in 30 min misses a 15-minute target
    assert "target 900 s" in out
    with pytest.raises(SystemExit) as refused:
        main(["stats", "--since", "yesterday"])
    assert refused.value.code == 2
    assert "give a duration like 24h" in capsys.readouterr().err


def test_ops_page_shows_time_to_read(db: Engine, seeded: Seeded, services: Services) -> None:
    add_user(db, "otto", Role.OPS)
    with serve(db, web_config(broker_url=services.broker_url)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "otto").status_code == 303
            page = http.get("/ops")
    assert 'id="read-stats"' in page.text
    row = [
        "24h", "flagged", "3", "1", "10 min", "10 min", "3", "60 s", "60 s", "50% (1/2)",
    ]  # fmt: skip
    assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in page.text
    assert "<td>7d</td><td>not flagged</td><td>2</td><td>1</td><td>2.0 h</td>" in page.text


def _scrape(engine: Engine, services: Services) -> Scrape:
    registry = metrics_registry(engine, services.broker_url, [services.queue_name])
    return parse(generate_latest(registry).decode())


def test_metrics_time_to_read_histogram_and_oldest_gauges(
    db: Engine, seeded: Seeded, services: Services
) -> None:
    scrape = _scrape(db, services)
    assert scrape.types["cxr_time_to_read_seconds"] == "histogram"
    assert scrape.value("cxr_time_to_read_seconds_count", flagged="true") == 2
    assert scrape.value("cxr_time_to_read_seconds_sum", flagged="true") == pytest.approx(2400)
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="true", le="300.0") == 0
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="true", le="600.0") == 1
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="true", le="1800.0") == 2
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="false", le="3600.0") == 0
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="false", le="7200.0") == 1
    assert scrape.value("cxr_time_to_read_seconds_bucket", flagged="false", le="+Inf") == 1
    # c: flagged, unread for 2 h; f: waiting for its score for 20 min
    assert 7200 <= scrape.value("cxr_flagged_unread_oldest_seconds") < 7200 + 300
    assert 1200 <= scrape.value("cxr_unscored_oldest_seconds") < 1200 + 300
    for name in ("cxr_flagged_unread_oldest_seconds", "cxr_unscored_oldest_seconds"):
        assert scrape.types[name] == "gauge"
    # the latency histograms are ordinary cumulative histograms now
    for name in ("cxr_turnaround_seconds", "cxr_scoring_decode_seconds"):
        assert scrape.types[name] == "histogram"
        assert scrape.get(f"{name}_gcount", default=-1) == -1
        assert scrape.value(f"{name}_count") == 5  # a to e, all time; f is not scored


def test_metrics_results_and_sign_in_failures(
    db: Engine, seeded: Seeded, services: Services
) -> None:
    before = _scrape(db, services)
    with db.begin() as conn:
        ids: dict[str, int] = dict(
            conn.execute(text("SELECT study_instance_uid, id FROM studies")).all()
        )
        conn.execute(
            text(
                "UPDATE studies SET result_state = 'complete', completed_at = now() - "
                "interval '15 minutes', results_enqueued_at = now() WHERE id = :id"
            ),
            {"id": ids[seeded.uids["c"]]},
        )
        conn.execute(
            text("UPDATE studies SET result_state = 'results_failed' WHERE id = :id"),
            {"id": ids[seeded.uids["a"]]},
        )
        for attempt, status in enumerate(("failed", "failed", "sent")):
            conn.execute(
                insert(ResultSend).values(
                    study_id=ids[seeded.uids["b"]],
                    result_version=1,
                    destination="PACS@127.0.0.1:104",
                    attempt=attempt + 1,
                    status=status,
                    sr_sop_instance_uid=f"{ROOT}.9.{attempt}",
                )
            )
    passwords: Passwords = cheap_passwords()
    policy = accounts.SignInPolicy(max_failures=2)
    for _ in range(3):  # two wrong passwords lock; the third is refused as locked
        accounts.sign_in(db, "rita", "wrong", passwords=passwords, policy=policy)

    after = _scrape(db, services)
    assert after.value("cxr_result_sends_total", outcome="failed") == 2
    assert after.value("cxr_result_sends_total", outcome="sent") == 1
    assert after.value("cxr_result_studies", state="results_failed") == 1
    assert after.value("cxr_result_studies", state="complete") == 1
    assert after.value("cxr_results_unsent") == 1
    assert 900 <= after.value("cxr_results_oldest_unsent_seconds") < 900 + 300
    assert after.types["cxr_result_sends"] == "counter"
    failures = after.value("cxr_sign_in_failures_total")
    assert failures - before.value("cxr_sign_in_failures_total") == 3
    assert (
        after.value("cxr_account_lockouts_total") - before.value("cxr_account_lockouts_total") == 1
    )
    assert after.value("cxr_accounts_locked") == 1
    assert after.value("cxr_queue_depth", queue=services.queue_name) >= 0
