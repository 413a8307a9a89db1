"""The reading flow over HTTP (issue 19, part 4): the worklist's background refresh is
not activity for the idle timeout, the next unread study, and the sign-in's way back to a
study whose answer was refused for want of a session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from cxr_db.accounts.tables import WebSession
from cxr_db.reading import store as reading
from tests.web_server import (
    Seeded,
    add_user,
    csrf_of,
    reset_accounts,
    seed_worklist,
    serve,
    sign_in,
)
from worklist.auth import BACKGROUND_HEADER, BACKGROUND_VALUE

pytestmark = pytest.mark.integration

BACKGROUND = {BACKGROUND_HEADER: BACKGROUND_VALUE}


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def seeded(db: Engine) -> Seeded:
    return seed_worklist(db)


@pytest.fixture
def reader(db: Engine, seeded: Seeded) -> Iterator[httpx.Client]:
    add_user(db, "ann")
    with serve(db) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        assert sign_in(http, "ann").status_code == 303
        yield http


def _last_seen(db: Engine) -> datetime:
    with db.connect() as conn:
        value: datetime = conn.execute(select(WebSession.last_seen_at)).scalar_one()
    return value


def _idle_since(db: Engine, ago: timedelta) -> datetime:
    with db.begin() as conn:
        value: datetime = conn.execute(
            update(WebSession)
            .values(last_seen_at=func.now() - ago)
            .returning(WebSession.last_seen_at)
        ).scalar_one()
    return value


def test_a_background_refresh_is_not_activity_and_other_requests_are(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    before = _idle_since(db, timedelta(minutes=5))
    for path in ("/", "/api/worklist"):
        resp = reader.get(path, headers=BACKGROUND)
        assert resp.status_code == 200, resp.text
        assert _last_seen(db) == before, path
    # the header is honoured for those GETs only: a study page is activity
    assert reader.get(f"/studies/{seeded.flagged_top}", headers=BACKGROUND).status_code == 200
    assert _last_seen(db) > before
    before = _idle_since(db, timedelta(minutes=5))
    assert reader.get("/", headers={BACKGROUND_HEADER: "other"}).status_code == 200
    assert _last_seen(db) > before
    before = _idle_since(db, timedelta(minutes=5))
    assert reader.get("/").status_code == 200  # the reader reloading the page
    assert _last_seen(db) > before


def test_a_background_refresh_still_ends_an_idle_session(db: Engine, reader: httpx.Client) -> None:
    _idle_since(db, timedelta(hours=1))  # past the default 30-minute idle timeout
    resp = reader.get("/", headers=BACKGROUND)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/sign-in?next=%2F"
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(WebSession)).scalar_one() == 0


def test_next_unread_skips_the_held_the_pending_and_the_one_passed_over(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    resp = reader.get("/next-unread")
    assert resp.headers["location"] == f"/studies/{seeded.order[0]}"
    resp = reader.get("/next-unread", params={"skip": seeded.order[0]})
    assert resp.headers["location"] == f"/studies/{seeded.order[1]}"
    reading.claim_study(db, seeded.order[1], add_user(db, "ben"))
    resp = reader.get("/next-unread", params={"skip": seeded.order[0]})
    assert resp.headers["location"] == f"/studies/{seeded.order[2]}"
    # ann answers all but the pending study (being scored) and ben's
    for uid in (seeded.order[0], seeded.order[2], seeded.order[3], seeded.order[5]):
        page = reader.get(f"/studies/{uid}").text
        reader.post(
            f"/studies/{uid}/answer", data={"csrf_token": csrf_of(page), "finding": "other"}
        )
    resp = reader.get("/next-unread")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/"


def test_an_answer_refused_for_an_expired_session_signs_in_back_to_the_study(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    uid = seeded.flagged_top
    page = reader.get(f"/studies/{uid}").text
    _idle_since(db, timedelta(days=1))
    resp = reader.post(
        f"/studies/{uid}/answer", data={"csrf_token": csrf_of(page), "finding": "pneumonia"}
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/sign-in?next=%2Fstudies%2F{uid}"
    assert reading.answers_for(db, uid) == []
    form = reader.get(resp.headers["location"]).text
    assert f'name="next" value="/studies/{uid}"' in form
