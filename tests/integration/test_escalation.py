"""Escalation of flagged studies left unread (issue 19), on real Postgres and Redis: the
scheduler's decisions and clock rules, the outbox delivered by the results sender's loop
to a local HTTP receiver (``http.server`` on a free loopback port), retries with every
attempt stored, the audit log, the worklist mark and the ops page.

Clock rules are driven with an explicit ``now`` (no waiting); the end-to-end test runs the
real scheduler jobs and delivery thread with small timings and waits on the receiver."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from cxr_common.settings import ResultSettings, SchedulerSettings
from cxr_db import make_engine
from cxr_db.accounts.tables import Role
from cxr_db.audit.tables import AuditAction
from cxr_db.escalations import store
from cxr_db.escalations.tables import DeliveryState, EscalationAttempt, EscalationDelivery
from cxr_db.reading import store as reading
from cxr_db.reading.tables import Finding
from cxr_db.worklist import reads
from cxr_db.worklist.reads import ReadView, WorklistQuery
from cxr_queue import make_celery
from cxr_scheduler.escalation import EVENT, payload
from cxr_scheduler.service import start_scheduler
from cxr_sender.escalation import EscalationDelivery as Delivery
from cxr_sender.service import start_escalation_delivery
from tests.conftest import Services
from tests.integration.reading_rows import (
    add_user,
    audit_after,
    audit_mark,
    clean,
    db_now,
    scored_study,
)

pytestmark = pytest.mark.integration

FLAGGED = "1.2.826.0.1.19.1"
ROUTINE = "1.2.826.0.1.19.2"
AFTER_S = 900.0
REPEAT_S = 600.0
PAYLOAD_KEYS = {
    "event",
    "escalation",
    "study_instance_uid",
    "accession_number",
    "score",
    "flagged_at",
    "unread_since",
    "unread_for_s",
    "escalated_at",
    "study_url",
    "model_version",
    "disclaimer",
}


@dataclass
class Receiver:
    """A webhook on loopback: each POST's JSON body lands in ``bodies``; it answers the
    statuses of ``answers`` in turn, then 200."""

    url: str
    bodies: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    answers: list[int] = field(default_factory=list)

    def take(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.bodies.get(timeout=timeout_s)

    def drained(self) -> list[dict[str, Any]]:
        out = []
        while not self.bodies.empty():
            out.append(self.bodies.get_nowait())
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = box[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rec.bodies.put(body)
            status = rec.answers.pop(0) if rec.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook/s3cret"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box[0]
    server.shutdown()
    server.server_close()


@pytest.fixture
def db(engine: Engine) -> Engine:
    return clean(engine)


def _escalate(db: Engine, at: datetime, webhooks: list[str] | None = None) -> list[str]:
    done = store.escalate_due(
        db,
        after_s=AFTER_S,
        repeat_s=REPEAT_S,
        webhooks=webhooks or [],
        payload=lambda s: payload(s, "https://cxr.example"),
        now=at,
    )
    return [f"{d.study_instance_uid}#{d.number}" for d in done]


def test_a_flagged_unread_study_is_escalated_then_repeated_and_an_unflagged_never(
    db: Engine,
) -> None:
    scored_study(db, FLAGGED, [0.2, 0.9])
    scored_study(db, ROUTINE, [0.1])
    t0 = db_now(db)
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S - 5)) == []
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + 5)) == [f"{FLAGGED}#1"]
    # once per period: the same moment again, and just before the repeat, escalate nothing
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + 5)) == []
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + REPEAT_S)) == []
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + REPEAT_S + 6)) == [f"{FLAGGED}#2"]
    later = t0 + timedelta(days=2)
    assert _escalate(db, later) == [f"{FLAGGED}#3"]  # one more, never a burst of catch-ups
    with db.connect() as conn:
        marks = store.escalation_marks(conn, [1, 2], now=later)
    assert marks == {1: store.EscalationMark(True, 3, later)}  # study 2 (routine): none


def test_opening_stops_escalation_and_a_release_restarts_the_clock(db: Engine) -> None:
    scored_study(db, FLAGGED, [0.9])
    user = add_user(db, "ann")
    t0 = db_now(db)
    hook = ["http://127.0.0.1:9/never-posted"]
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + 1), hook) == [f"{FLAGGED}#1"]
    opened = t0 + timedelta(seconds=AFTER_S + 60)
    claim = timedelta(hours=2)
    assert reading.claim_study(db, FLAGGED, user, now=opened, timeout=claim).claimed
    assert store.open_escalations(db, now=opened + timedelta(seconds=1)) == []
    # its undelivered webhook is cancelled: nobody is paged for a study being read
    assert store.cancel_stale_deliveries(db, now=opened + timedelta(seconds=1)) == 1
    assert store.take_due_deliveries(db, lease_s=60, now=opened + timedelta(days=1)) == []
    assert _escalate(db, opened + timedelta(seconds=REPEAT_S * 3)) == []  # still claimed
    released = opened + timedelta(seconds=REPEAT_S * 3 + 10)
    assert reading.release_study(db, FLAGGED, user, now=released)
    # the clock starts again from the release: the full delay, not the repeat interval
    assert _escalate(db, released + timedelta(seconds=AFTER_S - 5)) == []
    assert _escalate(db, released + timedelta(seconds=AFTER_S + 5)) == [f"{FLAGGED}#2"]
    (shown,) = store.open_escalations(db, now=released + timedelta(seconds=AFTER_S + 6))
    assert (shown.study_instance_uid, shown.number, shown.unread_for_s) == (
        FLAGGED,
        2,
        AFTER_S + 5,
    )


def test_an_expired_claim_restarts_the_clock_and_an_answered_study_is_never_escalated(
    db: Engine,
) -> None:
    scored_study(db, FLAGGED, [0.9])
    user = add_user(db, "ann")
    t0 = db_now(db)
    reading.claim_study(db, FLAGGED, user, now=t0, timeout=timedelta(minutes=30))
    expired = t0 + timedelta(minutes=30)
    assert _escalate(db, expired + timedelta(seconds=AFTER_S - 5)) == []
    assert _escalate(db, expired + timedelta(seconds=AFTER_S + 5)) == [f"{FLAGGED}#1"]
    reading.claim_study(db, FLAGGED, user, now=expired + timedelta(hours=1))
    reading.record_answer(
        db, FLAGGED, reading.Reader.from_user(user), Finding.PNEUMONIA,
        now=expired + timedelta(hours=1, seconds=5),
    )  # fmt: skip
    assert _escalate(db, expired + timedelta(days=3)) == []


def test_the_outbox_is_written_with_the_escalation_and_the_payload_names_no_patient(
    db: Engine,
) -> None:
    scored_study(db, FLAGGED, [0.9], version="v7")
    mark = audit_mark(db)
    t0 = db_now(db)
    hooks = ["https://a.example/hook/secret-1", "http://b.example:8080/x?token=secret-2"]
    assert _escalate(db, t0 + timedelta(seconds=AFTER_S + 1), hooks) == [f"{FLAGGED}#1"]
    due = store.take_due_deliveries(db, lease_s=60, now=t0 + timedelta(seconds=AFTER_S + 2))
    assert [d.webhook for d in due] == hooks
    body = due[0].payload
    assert set(body) == PAYLOAD_KEYS  # nothing else: no patient name, no patient ID
    assert body["event"] == EVENT
    assert body["study_instance_uid"] == FLAGGED
    assert body["score"] == pytest.approx(0.9)
    assert body["model_version"] == "v7"
    assert body["study_url"] == f"https://cxr.example/studies/{FLAGGED}"
    assert body["unread_for_s"] == pytest.approx(AFTER_S + 1, abs=1)
    assert "not a diagnosis" in body["disclaimer"]
    # taken once: the lease hides them from a second sender
    assert store.take_due_deliveries(db, lease_s=60, now=t0 + timedelta(seconds=AFTER_S + 3)) == []
    (entry,) = audit_after(db, mark)
    assert (entry.action, entry.actor, entry.actor_kind, entry.target) == (
        AuditAction.ESCALATION,
        "scheduler",
        "system",
        FLAGGED,
    )
    assert entry.detail["escalation"] == 1
    assert entry.detail["webhooks"] == 2


def _delivery(db: Engine, max_attempts: int) -> Delivery:
    """The results sender's delivery loop (not started: the test drives its attempts)."""
    return Delivery(
        db, timeout_s=5.0, max_attempts=max_attempts, max_backoff_s=0.05, poll_s=60.0,
        first_backoff_s=0.01,
    )  # fmt: skip


def _attempt_until_final(db: Engine, sender: Delivery, far: datetime) -> list[DeliveryState]:
    states = []
    for n in range(10):
        batch = store.take_due_deliveries(db, lease_s=60, now=far + timedelta(minutes=n))
        if not batch:
            break
        states += [sender.deliver(d) for d in batch]
    return states


def test_a_webhook_answering_500_is_retried_with_every_attempt_stored(
    db: Engine, receiver: Receiver
) -> None:
    scored_study(db, FLAGGED, [0.9])
    mark = audit_mark(db)
    t0 = db_now(db)
    receiver.answers[:] = [500, 503]
    _escalate(db, t0 + timedelta(seconds=AFTER_S + 1), [receiver.url])
    sender = _delivery(db, max_attempts=5)
    try:
        states = _attempt_until_final(db, sender, t0 + timedelta(hours=1))
    finally:
        sender.stop()
    assert states == [DeliveryState.PENDING, DeliveryState.PENDING, DeliveryState.DELIVERED]
    assert len(receiver.drained()) == 3
    with db.connect() as conn:
        attempts = conn.execute(
            select(
                EscalationAttempt.attempt, EscalationAttempt.ok, EscalationAttempt.http_status
            ).order_by(EscalationAttempt.attempt)
        ).all()
        (row,) = conn.execute(
            select(
                EscalationDelivery.state,
                EscalationDelivery.attempts,
                EscalationDelivery.delivered_at,
            )
        ).all()
    assert [tuple(a) for a in attempts] == [(1, False, 500), (2, False, 503), (3, True, 200)]
    assert (row.state, row.attempts, row.delivered_at is not None) == ("delivered", 3, True)
    deliveries = [e for e in audit_after(db, mark) if e.action == AuditAction.ESCALATION_DELIVERY]
    assert [(e.detail["outcome"], e.detail["http_status"]) for e in deliveries] == [
        ("retrying", 500),
        ("retrying", 503),
        ("delivered", 200),
    ]
    # the audit names the webhook's host, never its secret path
    assert {e.detail["webhook"] for e in deliveries} == {receiver.url.split("/hook")[0]}


def test_a_webhook_that_keeps_failing_is_given_up_and_shown(db: Engine, receiver: Receiver) -> None:
    scored_study(db, FLAGGED, [0.9])
    t0 = db_now(db)
    receiver.answers[:] = [500] * 10
    dead = "http://127.0.0.1:9/refused"  # nothing listens on the discard port
    _escalate(db, t0 + timedelta(seconds=AFTER_S + 1), [receiver.url, dead])
    sender = _delivery(db, max_attempts=2)
    try:
        states = _attempt_until_final(db, sender, t0 + timedelta(hours=1))
    finally:
        sender.stop()
    assert states.count(DeliveryState.FAILED) == 2
    (shown,) = store.open_escalations(db, now=t0 + timedelta(hours=2))
    assert [(d.webhook, d.state, d.attempts) for d in shown.deliveries] == [
        (receiver.url.split("/hook")[0], DeliveryState.FAILED, 2),
        ("http://127.0.0.1:9", DeliveryState.FAILED, 2),
    ]
    assert shown.deliveries[0].last_error == "HTTP 500"
    assert shown.deliveries[1].last_status is None
    assert store.failing_deliveries(db) == 2
    counts = store.metric_counts(db)
    assert counts.by_outcome == dict.fromkeys(store.OUTCOMES, 0) | {"failed": 1}
    assert counts.open == 1


def test_scheduler_and_sender_deliver_to_a_local_receiver_until_the_study_is_opened(
    db: Engine, services: Services, receiver: Receiver
) -> None:
    """The real roles' wiring: ``start_scheduler`` (every job, escalation included) and
    the results sender's delivery thread, escalate after 1 s and repeat every 1 s."""
    scored_study(db, FLAGGED, [0.9])
    scored_study(db, ROUTINE, [0.1])
    common: dict[str, Any] = {
        "database_url": services.database_url,
        "broker_url": services.broker_url,
        "queue_name": services.queue_name,
        "results_queue_name": f"{services.queue_name}-results",
        "data_dir": services.data_dir,
    }
    scheduler_settings = SchedulerSettings(
        **common,
        escalate_after_s=1.0,
        escalate_repeat_s=1.0,
        escalation_interval_s=0.2,
        escalation_webhooks=receiver.url,
        web_base_url="http://worklist.test/",
    )
    sender_settings = ResultSettings(**common, escalation_poll_s=0.1)
    # each connected as its own database role, as compose runs them (issue 20)
    scheduler_db = make_engine(services.role_url("scheduler"))
    results_db = make_engine(services.role_url("results"))
    scheduler = start_scheduler(
        scheduler_settings, scheduler_db, make_celery(services.broker_url, services.queue_name)
    )
    sender = start_escalation_delivery(sender_settings, results_db)
    try:
        first, second = receiver.take(), receiver.take()
        user = add_user(db, "ann")
        assert reading.claim_study(db, FLAGGED, user).claimed
        scheduler.escalation.run_once()  # a pass after the claim: nothing more
        sender.run_once()
    finally:
        scheduler.shutdown()
        sender.stop()
        scheduler_db.dispose()
        results_db.dispose()
    assert (first["study_instance_uid"], first["escalation"]) == (FLAGGED, 1)
    assert (second["study_instance_uid"], second["escalation"]) == (FLAGGED, 2)
    assert first["study_url"] == f"http://worklist.test/studies/{FLAGGED}"
    assert first["unread_for_s"] >= 1.0
    late = receiver.drained()  # a third may have been on its way before the claim
    assert {b["study_instance_uid"] for b in late} <= {FLAGGED}
    assert len(late) <= 1
    assert store.open_escalations(db) == []


def test_worklist_marks_the_escalated_study_and_the_ops_page_lists_it(
    db: Engine, services: Services, receiver: Receiver
) -> None:
    from tests.web_server import add_user as add_web_user
    from tests.web_server import serve, sign_in, web_config

    scored_study(db, FLAGGED, [0.9])
    scored_study(db, ROUTINE, [0.1])
    _escalate(db, db_now(db) - timedelta(seconds=1), [])  # nothing due yet
    store.escalate_due(
        db, after_s=0.0, repeat_s=REPEAT_S, webhooks=[receiver.url],
        payload=lambda s: payload(s, ""),
    )  # fmt: skip
    page = reads.worklist_page(db, WorklistQuery(view=ReadView.UNREAD, limit=10))
    marked = {e.study_instance_uid: (e.escalated, e.escalations) for e in page.entries}
    assert marked == {FLAGGED: (True, 1), ROUTINE: (False, 0)}
    add_web_user(db, "ann")
    add_web_user(db, "olga", Role.OPS)
    with serve(db, web_config(broker_url=services.broker_url)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "ann").status_code == 303
            rows = {e["study_instance_uid"]: e for e in http.get("/api/worklist").json()}
            html = http.get("/").text
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "olga").status_code == 303
            ops = http.get("/ops").text
    assert (rows[FLAGGED]["escalated"], rows[FLAGGED]["escalations"]) == (True, 1)
    assert (rows[ROUTINE]["escalated"], rows[ROUTINE]["escalations"]) == (False, 0)
    assert html.count("ESCALATED</span>") == 1
    assert f'data-study="{FLAGGED}"' in ops
    assert "pending (0 attempts)" in ops
    assert "s3cret" not in ops  # the webhook's path is never shown
