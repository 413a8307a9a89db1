"""The web worklist over HTTP: a real uvicorn server in a thread, real Postgres and Redis,
httpx. Sign-in, roles, CSRF, read state and answers, paging, health and readiness."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from cxr_db.accounts.tables import Role
from cxr_db.instances import writes as repo
from cxr_db.reading import store as reading
from cxr_db.worklist import reads
from cxr_triage.worklist_view import DISCLAIMER
from tests.conftest import REPO, Services
from tests.db_rows import prediction, record
from tests.dicom_factory import chest_like, make_dataset, write
from tests.integration.reading_rows import PASSWORD, audit_after, audit_mark
from tests.peers import requires_peer
from tests.support import free_port, running, wait_until
from tests.web_server import (
    PATIENT_ID,
    PATIENT_NAME_SHOWN,
    Seeded,
    add_token,
    add_user,
    csrf_of,
    heatmap_png,
    open_study,
    reset_accounts,
    seed_worklist,
    serve,
    sign_in,
    web_config,
)
from worklist.app import create_app
from worklist.config import shipped_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def seeded(db: Engine, tmp_path: Path) -> Seeded:
    return seed_worklist(db, tmp_path / "instances")


@pytest.fixture
def base_url(db: Engine, services: Services) -> Iterator[str]:
    with serve(db, web_config(broker_url=services.broker_url)) as url:
        yield url


@pytest.fixture
def reader(db: Engine, base_url: str) -> Iterator[httpx.Client]:
    """A radiologist signed in through the form (cookie jar holds the session)."""
    add_user(db, "ann")
    with httpx.Client(base_url=base_url, timeout=30) as http:
        resp = sign_in(http, "ann")
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == "/"
        yield http


@pytest.fixture
def token(db: Engine) -> str:
    return add_token(db, "ris")


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# ------------------------------------------------------------------ access


@pytest.mark.parametrize(
    "path",
    ["/", "/?view=read", "/studies/1.2.826.0.1.7.2", "/heatmaps/1.2.826.0.1.7.2.1.png",
     "/images/1.2.826.0.1.7.2.1.png", "/model-card", "/admin/audit", "/admin/users", "/ops"],
)  # fmt: skip
def test_pages_without_a_session_redirect_to_sign_in(
    base_url: str, seeded: Seeded, path: str
) -> None:
    resp = httpx.get(base_url + path, follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/sign-in?next=")


@pytest.mark.parametrize("path", ["/api/worklist", "/api/audit", "/readyz", "/metrics"])
def test_api_without_credentials_is_401(base_url: str, path: str) -> None:
    resp = httpx.get(base_url + path)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in resp.json()["detail"]
    bad = httpx.get(base_url + path, headers=_bearer("cxr_not-a-token"))
    assert bad.status_code == 401
    basic = httpx.get(base_url + path, headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401


def test_api_with_the_wrong_role_is_403(db: Engine, base_url: str) -> None:
    admin, ops, rad = add_token(db, "adm", Role.ADMIN), add_token(db, "prom", Role.OPS), None
    rad = add_token(db, "ris", Role.RADIOLOGIST)
    cases = [
        ("/api/worklist", admin),
        ("/api/worklist", ops),
        ("/api/audit", rad),
        ("/api/audit", ops),
        ("/readyz", rad),
        ("/metrics", admin),
    ]
    for path, value in cases:
        resp = httpx.get(base_url + path, headers=_bearer(value))
        assert resp.status_code == 403, path
        assert "needs the role" in resp.json()["detail"]
    answer = httpx.post(
        base_url + "/api/studies/1.2.3/answer", headers=_bearer(admin), json={"finding": "other"}
    )
    assert answer.status_code == 403


def test_public_routes_answer_without_a_session(base_url: str) -> None:
    assert httpx.get(base_url + "/healthz").status_code == 200
    page = httpx.get(base_url + "/sign-in")
    assert page.status_code == 200
    assert 'name="csrf_token"' in page.text
    assert DISCLAIMER in page.text
    js = httpx.get(base_url + "/static/viewer.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")


def test_a_wrong_role_in_the_browser_is_403_or_its_home(db: Engine, base_url: str) -> None:
    add_user(db, "ada", Role.ADMIN)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        resp = sign_in(http, "ada")
        assert resp.headers["location"] == "/admin/audit"
        assert http.get("/").headers["location"] == "/admin/audit"
        page = http.get("/studies/1.2.826.0.1.7.2")
        assert page.status_code == 403
        assert "needs the role radiologist" in page.text
        assert http.get("/admin/users").status_code == 200


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_it(
    db: Engine, base_url: str
) -> None:
    add_user(db, "ann")
    with httpx.Client(base_url=base_url, timeout=30) as http:
        resp = sign_in(http, "ann")
        cookie = next(
            v for k, v in resp.headers.multi_items() if k == "set-cookie" and "cxr_session" in v
        )
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; see the TLS test
        page = http.get("/")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        secret = http.cookies["cxr_session"]
        assert http.post("/sign-out", data={"csrf_token": csrf}).status_code == 303
    with httpx.Client(base_url=base_url, timeout=30, cookies={"cxr_session": secret}) as again:
        assert again.get("/").status_code == 303  # the old cookie opens nothing


def test_the_cookie_is_secure_when_configured(db: Engine) -> None:
    add_user(db, "ann")
    with (
        serve(db, web_config(cookie_secure=True)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        form = http.get("/sign-in")
        assert "Secure" in form.headers["set-cookie"]
        resp = http.post(  # a Secure cookie is not sent over plain HTTP: send it by hand
            "/sign-in",
            data={"csrf_token": csrf_of(form.text), "username": "ann", "password": PASSWORD},
            headers={"Cookie": f"cxr_signin={form.cookies['cxr_signin']}"},
        )
        assert resp.status_code == 303
        assert "Secure" in resp.headers["set-cookie"]


def test_sign_in_without_the_form_token_is_403(db: Engine, base_url: str) -> None:
    add_user(db, "ann")
    resp = httpx.post(base_url + "/sign-in", data={"username": "ann", "password": PASSWORD})
    assert resp.status_code == 403
    assert "cxr_session" not in resp.headers.get("set-cookie", "")


def test_lock_out_after_repeated_failures_with_one_message(db: Engine, base_url: str) -> None:
    add_user(db, "ann")
    mark = audit_mark(db)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        messages = set()
        for _ in range(4):
            resp = sign_in(http, "ann", "not the password at all")
            assert resp.status_code == 401
            messages.add(resp.text.split('role="alert">')[1].split("<")[0])
        assert len(messages) == 1
        fifth = sign_in(http, "ann", "not the password at all")
        assert fifth.status_code == 429, "the fifth locks ann from this address"
        assert int(fifth.headers["retry-after"]) > 0
        locked = sign_in(http, "ann")
        assert locked.status_code == 429, "the right password is refused while locked"
        assert "cxr_session" not in http.cookies
        unknown = sign_in(http, "nobody-here", "whatever password")
        assert unknown.status_code == 401
    actions = [e.action for e in audit_after(db, mark)]
    assert actions.count("sign_in_failed") == 7
    assert "account_locked" in actions


def test_untrusted_host_header_is_refused(base_url: str) -> None:
    resp = httpx.get(base_url + "/healthz", headers={"Host": "attacker.example"})
    assert resp.status_code == 400


# ------------------------------------------------------------------ worklist


def test_api_worklist_is_in_worklist_order_flagged_first(
    base_url: str, seeded: Seeded, token: str
) -> None:
    resp = httpx.get(base_url + "/api/worklist", headers=_bearer(token))
    assert resp.status_code == 200
    body = resp.json()
    assert [e["study_instance_uid"] for e in body] == list(seeded.order)
    assert [e["flagged"] for e in body] == [True, True, False, False, False, False]
    assert body[0]["score"] == pytest.approx(0.912)
    assert body[0]["heatmap_sop_instance_uids"] == [seeded.flagged_top_sop]
    assert {e["read_state"] for e in body} == {"unread"}
    assert all(e["finding"] is None and e["read_by"] is None for e in body)
    limited = httpx.get(base_url + "/api/worklist", params={"limit": 2}, headers=_bearer(token))
    assert [e["study_instance_uid"] for e in limited.json()] == list(seeded.order[:2])
    nxt = limited.headers["link"]
    assert nxt.startswith("</api/worklist?")
    assert nxt.endswith('>; rel="next"')
    page2 = httpx.get(base_url + nxt[1 : nxt.index(">")], headers=_bearer(token))
    assert [e["study_instance_uid"] for e in page2.json()] == list(seeded.order[2:4])


@pytest.mark.parametrize("limit", ["0", "5001", "-1", "many"])
def test_api_worklist_rejects_a_bad_limit(base_url: str, token: str, limit: str) -> None:
    resp = httpx.get(base_url + "/api/worklist", params={"limit": limit}, headers=_bearer(token))
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "limit"]


def test_api_worklist_rejects_a_bad_state_and_cursor(base_url: str, token: str) -> None:
    h = _bearer(token)
    assert httpx.get(base_url + "/api/worklist?state=done", headers=h).status_code == 422
    bad = httpx.get(base_url + "/api/worklist?after=bm90IGEgY3Vyc29y", headers=h)
    assert bad.status_code == 400
    assert "cursor" in bad.json()["detail"]


def test_worklist_page_shows_order_disclaimer_and_reasons(
    reader: httpx.Client, seeded: Seeded
) -> None:
    resp = reader.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert DISCLAIMER in page
    assert seeded.failed_reason in page
    assert seeded.not_eligible_reason in page
    main, _, not_scored = page.partition('id="not-scored"')
    scored_order = [u for u in seeded.order if u not in ("1.2.826.0.1.7.3", "1.2.826.0.1.7.4")]
    positions = [main.index(f'data-study="{uid}"') for uid in scored_order]
    assert positions == sorted(positions)
    assert 'data-study="1.2.826.0.1.7.3"' in not_scored
    assert 'data-study="1.2.826.0.1.7.4"' in not_scored
    assert page.count("LIKELY POSITIVE") == 2
    assert f'href="/studies/{seeded.flagged_top}"' in page
    assert "0.912" in page
    # one same-origin script (shortcuts, its own refresh); the page works without it
    assert page.count("<script") == 1
    assert '<script src="/static/reading.js" defer></script>' in page
    assert "http://" not in page
    assert "https://" not in page
    assert "6</strong> unread" in page
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1]


def test_study_page_claims_and_shows_context_images_and_answer_form(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    mark = audit_mark(db)
    resp = reader.get(f"/studies/{seeded.flagged_top}")
    assert resp.status_code == 200
    page = resp.text
    assert DISCLAIMER in page
    assert f'<img src="/heatmaps/{seeded.flagged_top_sop}.png"' in page
    assert f'<img src="/images/{seeded.flagged_top_sop}.png"' in page
    for fact in ("0.912", "0.420", "2026.11-cal1", "LIKELY POSITIVE", "threshold 0.420"):
        assert fact in page
    assert PATIENT_NAME_SHOWN in page
    assert PATIENT_ID in page
    assert "2026-01-15" in page
    assert ">F<" in page
    assert "64 y" in page
    assert '<script src="/static/viewer.js" defer></script>' in page
    assert 'action="/studies/1.2.826.0.1.7.2/answer"' in page
    assert 'href="/model-card"' in page
    assert reading.read_state(db, seeded.flagged_top).claimed_by is None, "a GET claims nothing"
    open_study(reader, seeded.flagged_top)  # the page's script claims it with a POST
    assert reading.read_state(db, seeded.flagged_top).claimed_by == "ann"
    png = reader.get(f"/heatmaps/{seeded.flagged_top_sop}.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    plain = reader.get(f"/images/{seeded.flagged_top_sop}.png")
    assert plain.status_code == 200
    assert plain.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"tEXt" not in plain.content
    assert b"Zzyzx" not in plain.content
    actions = [(e.action, e.target, e.actor) for e in audit_after(db, mark)]
    assert ("study_view", seeded.flagged_top, "ann") in actions
    assert ("study_claim", seeded.flagged_top, "ann") in actions
    assert ("heatmap_fetch", seeded.flagged_top_sop, "ann") in actions
    assert ("image_fetch", seeded.flagged_top_sop, "ann") in actions
    assert all(e.client_addr == "127.0.0.1" for e in audit_after(db, mark))
    card = reader.get("/model-card")
    assert card.status_code == 200
    assert (shipped_model_dir() / "MODEL_CARD.md").read_text().splitlines()[0][:20] in card.text


def test_a_second_reader_sees_in_progress_and_cannot_answer(
    db: Engine, reader: httpx.Client, base_url: str, seeded: Seeded
) -> None:
    open_study(reader, seeded.flagged_top)
    add_user(db, "ben")
    with httpx.Client(base_url=base_url, timeout=30) as ben:
        sign_in(ben, "ben")
        listing = ben.get("/").text
        row = listing[listing.index(f'data-study="{seeded.flagged_top}"') :]
        assert "in progress by ann" in row[: row.index("</tr>")]
        page = ben.get(f"/studies/{seeded.flagged_top}").text
        assert "In progress by ann" in page
        assert 'id="answer-form"' not in page
        csrf = csrf_of(page)
        refused = ben.post(
            f"/studies/{seeded.flagged_top}/answer",
            data={"csrf_token": csrf, "finding": "pneumonia"},
        )
        assert refused.status_code == 409
        assert "in progress by ann" in refused.text
    assert reading.read_state(db, seeded.flagged_top).claimed_by == "ann"


def test_answer_form_marks_read_and_the_study_leaves_the_unread_view(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    page = reader.get(f"/studies/{seeded.flagged_top}").text
    no_csrf = reader.post(f"/studies/{seeded.flagged_top}/answer", data={"finding": "pneumonia"})
    assert no_csrf.status_code == 403
    wrong = reader.post(
        f"/studies/{seeded.flagged_top}/answer",
        data={"finding": "pneumonia", "csrf_token": "x" * 43},
    )
    assert wrong.status_code == 403
    bad = reader.post(
        f"/studies/{seeded.flagged_top}/answer",
        data={"finding": "maybe", "csrf_token": csrf_of(page)},
    )
    assert bad.status_code == 422
    assert "finding must be one of" in bad.text
    saved = reader.post(
        f"/studies/{seeded.flagged_top}/answer",
        data={
            "csrf_token": csrf_of(page),
            "finding": "pneumonia",
            "note": "right lower lobe",
            "model_version": "2026.11-cal1",
            "score": "0.912",
        },
    )
    assert saved.status_code == 303
    # the next unread study in worklist order opens, saying the answer was saved
    assert saved.headers["location"] == f"/studies/{seeded.order[1]}?saved={seeded.flagged_top}"
    following = reader.get(saved.headers["location"]).text
    assert f'data-saved="{seeded.flagged_top}"' in following
    assert f"Answer saved for study {seeded.flagged_top}" in following
    unread = reader.get("/").text
    assert f'data-study="{seeded.flagged_top}"' not in unread
    read = reader.get("/", params={"view": "read", "q": "ann"}).text
    assert f'data-study="{seeded.flagged_top}"' in read
    assert "read by ann: pneumonia" in read
    info = reading.read_state(db, seeded.flagged_top)
    assert (info.state.value, info.read_by, info.finding and info.finding.value) == (
        "read",
        "ann",
        "pneumonia",
    )
    (answer,) = reading.answers_for(db, seeded.flagged_top)
    assert (answer.note, answer.model_version, answer.score) == (
        "right lower lobe",
        "2026.11-cal1",
        pytest.approx(0.912),
    )


def test_release_returns_the_study_to_unread(
    db: Engine, reader: httpx.Client, seeded: Seeded
) -> None:
    page = reader.get(f"/studies/{seeded.flagged_top}").text
    resp = reader.post(f"/studies/{seeded.flagged_top}/release", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 303
    assert reading.read_state(db, seeded.flagged_top).state.value == "unread"


def test_api_answer_with_a_token_and_csrf_for_cookies(
    db: Engine, base_url: str, reader: httpx.Client, seeded: Seeded, token: str
) -> None:
    mark = audit_mark(db)
    url = f"/api/studies/{seeded.order[1]}/answer"
    resp = httpx.post(
        base_url + url, headers=_bearer(token), json={"finding": "no_pneumonia", "note": "ok"}
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["finding"], body["read_by"], body["read_state"]) == ("no_pneumonia", "ris", "read")
    assert body["score"] == pytest.approx(0.655)
    again = httpx.post(base_url + url, headers=_bearer(token), json={"finding": "other"})
    assert again.status_code == 409
    assert "already read by ris" in again.json()["detail"]
    for bad_body, code in (({"finding": "maybe"}, 422), ([1, 2], 400), ({"note": "x"}, 422)):
        other = f"/api/studies/{seeded.order[5]}/answer"
        assert httpx.post(base_url + other, headers=_bearer(token), json=bad_body).status_code == (
            code
        )
    missing = httpx.post(
        base_url + "/api/studies/1.2.999/answer", headers=_bearer(token), json={"finding": "other"}
    )
    assert missing.status_code == 404
    # a session cookie alone is not enough for a change: the CSRF header is required
    cookie_only = reader.post(f"/api/studies/{seeded.order[5]}/answer", json={"finding": "other"})
    assert cookie_only.status_code == 403
    csrf = csrf_of(reader.get("/").text)
    with_header = reader.post(
        f"/api/studies/{seeded.order[5]}/answer",
        json={"finding": "other"},
        headers={"X-CSRF-Token": csrf},
    )
    assert with_header.status_code == 201
    read = httpx.get(
        base_url + "/api/worklist", params={"state": "read"}, headers=_bearer(token)
    ).json()
    assert {e["study_instance_uid"]: (e["read_by"], e["finding"]) for e in read} == {
        seeded.order[1]: ("ris", "no_pneumonia"),
        seeded.order[5]: ("ann", "other"),
    }
    assert all(e["read_at"] for e in read)
    unread = httpx.get(base_url + "/api/worklist", headers=_bearer(token)).json()
    assert len(unread) == 4
    answers = [e for e in audit_after(db, mark) if e.action == "answer"]
    assert [(e.actor, e.actor_kind, e.target) for e in answers] == [
        ("ris", "token", seeded.order[1]),
        ("ann", "user", seeded.order[5]),
    ]


def test_failed_study_page_shows_reason_without_images(
    reader: httpx.Client, seeded: Seeded
) -> None:
    page = reader.get(f"/studies/{seeded.order[2]}").text
    assert seeded.failed_reason in page
    assert "<img" not in page
    assert reader.get(f"/images/{seeded.order[2]}.1.png").status_code == 404


def test_unknown_study_and_heatmap_are_404_with_a_message(reader: httpx.Client) -> None:
    resp = reader.get("/studies/1.2.3.999")
    assert resp.status_code == 404
    assert "No study with Study Instance UID 1.2.3.999" in resp.text
    assert DISCLAIMER in resp.text
    png = reader.get("/heatmaps/1.2.3.999.1.png")
    assert png.status_code == 404
    assert "no heatmap" in png.json()["detail"]


@pytest.mark.parametrize("uid", ["abc", "1.2.3;DROP", "1" * 65, "1.2.<b>x"])
def test_malformed_uids_are_400_with_a_message(reader: httpx.Client, uid: str) -> None:
    resp = reader.get(f"/studies/{uid}")
    assert resp.status_code == 400
    assert "Malformed Study Instance UID" in resp.text
    assert "<b>" not in resp.text
    png = reader.get(f"/heatmaps/{uid}.png")
    assert png.status_code == 400
    assert "malformed SOP Instance UID" in png.json()["detail"]


def test_markup_in_stored_values_comes_back_escaped_on_every_page(
    db: Engine, reader: httpx.Client, tmp_path: Path
) -> None:
    """Autoescaping in practice: an accession number (a database value), a patient name (a
    DICOM header value) and a search (a query value) that are markup are shown as text."""
    study, sop = "1.2.826.0.1.66.1", "1.2.826.0.1.66.1.1"
    ds = make_dataset(chest_like(64, seed=0), study_uid=study, sop_uid=sop)
    ds.PatientName = "<script>alert(1)</script>^Eve"
    path = write(ds, tmp_path / study / f"{sop}.dcm")
    rec = repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=sop,
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        accession_number='"><img src=x>&',
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        calling_ae_title="TEST",
        storage_uri=path.as_uri(),
        size_bytes=path.stat().st_size,
    )
    instance_id = repo.record_instance(db, rec).instance_id
    repo.record_prediction(db, instance_id, prediction(0.9, threshold=0.42, png=heatmap_png(1)))
    listing = reader.get("/", params={"q": "<u>x</u>"})
    assert listing.status_code == 200
    assert 'value="&lt;u&gt;x&lt;/u&gt;"' in listing.text
    worklist = reader.get("/").text
    assert "&#34;&gt;&lt;img src=x&gt;&amp;" in worklist
    assert "<img" not in worklist
    page = reader.get(f"/studies/{study}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x&gt;&amp;" in page
    assert "<script>alert" not in page
    assert "<img src=x" not in page


def _seed_flagged_in_bulk(db: Engine, n: int) -> None:
    """``n`` flagged, scored studies with one instance each, in two statements."""
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (study_instance_uid, accession_number, flagged, score, "
                "first_received_at) SELECT '1.2.826.0.1.9.' || g, 'BULK-' || g, true, "
                "0.5 + (g % 400) / 1000.0, now() - interval '1 day' + g * interval '1 second' "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": n},
        )
        conn.execute(
            text(
                "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, storage_uri, "
                "size_bytes, status) SELECT id, study_instance_uid || '.1', "
                "'1.2.840.10008.5.1.4.1.1.1', 'file:///nowhere/x.dcm', 1, 'done' "
                "FROM studies WHERE study_instance_uid LIKE '1.2.826.0.1.9.%'"
            )
        )


def test_a_new_not_eligible_study_is_on_the_first_unread_page_behind_1200_flagged(
    db: Engine, reader: httpx.Client, base_url: str, token: str
) -> None:
    _seed_flagged_in_bulk(db, 1200)
    newest = record(db, "1.2.826.0.1.8.1", "1.2.826.0.1.8.1.1", "NEW-LATERAL")
    repo.record_not_eligible(db, newest, "lateral view: not a frontal chest radiograph")
    page = reader.get("/").text
    assert 'data-study="1.2.826.0.1.8.1"' in page
    assert "lateral view: not a frontal chest radiograph" in page
    assert "1201</strong> unread" in page
    assert "1200</strong> likely positive" in page
    assert page.count('data-study="1.2.826.0.1.9.') == 50  # one page of flagged ones
    # the JSON API pages through all of them: every study once, the new one included
    seen: list[str] = []
    url: str | None = "/api/worklist?limit=500"
    while url:
        resp = httpx.get(base_url + url, headers=_bearer(token))
        assert resp.status_code == 200
        seen.extend(e["study_instance_uid"] for e in resp.json())
        link = resp.headers.get("link")
        url = link[1 : link.index(">")] if link else None
    assert len(seen) == len(set(seen)) == 1201
    assert seen[-1] == "1.2.826.0.1.8.1"
    # the HTML pages chain through the flagged studies too
    second = reader.get("/", params={"after": reads.worklist_page(
        db, reads.WorklistQuery(limit=50, exclude_statuses=reads.UNSCORED_FINAL)
    ).next_cursor})  # fmt: skip
    assert second.status_code == 200
    assert second.text.count('data-study="1.2.826.0.1.9.') == 50


# ------------------------------------------------------------------ admin, ops, health


def test_audit_api_and_page_for_admins(db: Engine, base_url: str, reader: httpx.Client,
                                       seeded: Seeded) -> None:  # fmt: skip
    open_study(reader, seeded.flagged_top)
    admin = add_token(db, "auditor", Role.ADMIN)
    h = _bearer(admin)
    resp = httpx.get(
        base_url + "/api/audit", params={"actor": "ann", "action": "study_view"}, headers=h
    )
    assert resp.status_code == 200
    entries = resp.json()["entries"]  # the log outlives tests: earlier "ann" views too
    assert entries[0]["target"] == seeded.flagged_top
    assert {(e["actor"], e["action"]) for e in entries} == {("ann", "study_view")}
    assert entries[0]["client_addr"] == "127.0.0.1"
    one = httpx.get(base_url + "/api/audit", params={"limit": 1}, headers=h).json()
    assert len(one["entries"]) == 1
    assert one["next_before_id"] is not None
    older = httpx.get(
        base_url + "/api/audit", params={"limit": 1, "before_id": one["next_before_id"]}, headers=h
    ).json()
    assert older["entries"][0]["id"] < one["entries"][0]["id"]
    assert httpx.get(base_url + "/api/audit?action=nope", headers=h).status_code == 422
    add_user(db, "ada", Role.ADMIN)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        sign_in(http, "ada")
        page = http.get("/admin/audit", params={"target": seeded.flagged_top}).text
        assert 'data-action="study_view"' in page
        assert 'data-action="study_claim"' in page
        users = http.get("/admin/users").text
        assert "ann" in users
        assert "auditor" in users
        assert PATIENT_NAME_SHOWN not in page + users


def test_healthz_checks_database_and_broker(db: Engine, base_url: str) -> None:
    resp = httpx.get(base_url + "/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "database": "answers", "broker": "answers"}
    assert resp.headers["x-content-type-options"] == "nosniff"
    with serve(db, web_config(broker_url="redis://127.0.0.1:1/0", broker_timeout_s=1)) as url:
        down = httpx.get(url + "/healthz")
    assert down.status_code == 503
    assert down.json()["broker"] == "broker does not answer"


def test_healthz_503_when_the_database_does_not_answer() -> None:
    dead = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        with serve(dead) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
            resp = http.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["status"] == "unavailable"
    finally:
        dead.dispose()
    assert create_app(dead) is not None  # building the app touches no database


def test_readyz_and_metrics_for_ops(db: Engine, base_url: str, tmp_path: Path) -> None:
    ops = add_token(db, "prom", Role.OPS)
    ready = httpx.get(base_url + "/readyz", headers=_bearer(ops))
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["model"]["ok"] is True
    assert body["model"]["version"]
    assert body["model"]["calibration_version"]
    metrics = httpx.get(base_url + "/metrics", headers=_bearer(ops))
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    # weights that do not match model.json: not ready, and it says why
    tampered = tmp_path / "model"
    shutil.copytree(shipped_model_dir(), tampered)
    with (tampered / "weights.pt").open("ab") as fh:
        fh.write(b"\0")
    with serve(db, web_config(model_dir=tampered)) as url:
        bad = httpx.get(url + "/readyz", headers=_bearer(ops))
    assert bad.status_code == 503
    assert bad.json()["model"]["detail"] == "weights sha256 differs from model.json"


# ------------------------------------------------------------------ the real process


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, **kw: object) -> httpx.Response:
    def answer() -> httpx.Response | None:
        try:
            return httpx.get(url, timeout=5, **kw)  # type: ignore[arg-type]
        except httpx.TransportError:
            return None

    return wait_until(answer, 60, "the web worklist answering", alive=running([proc], log))


def _start_web(
    services: Services, tmp_path: Path, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    env = services.env("web") | {"CXR_WEB_HOST": "127.0.0.1", "CXR_WEB_PORT": str(port)} | extra
    log = tmp_path / "web.log"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", "--log-level", "DEBUG", "web"],
        env=env,
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return proc, port, log


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_run_web_serves_until_sigterm_and_logs_no_secret_or_patient_data(
    db: Engine, services: Services, tmp_path: Path
) -> None:
    seeded = seed_worklist(db, tmp_path / "instances")
    from cxr_common.passwords import Passwords
    from cxr_db.accounts import store as accounts

    accounts.add_user(db, "ann", PASSWORD, Role.RADIOLOGIST, passwords=Passwords(),
                      actor=accounts.Actor("cli:test", accounts.ActorKind.CLI))  # fmt: skip
    token = add_token(db, "ris")
    proc, port, log = _start_web(services, tmp_path, {})
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(base + "/healthz", proc, log).status_code == 200
        with httpx.Client(base_url=base, timeout=30) as http:
            assert sign_in(http, "ann", "a wrong password, typed").status_code == 401
            assert sign_in(http, "ann").status_code == 303
            page = http.get(f"/studies/{seeded.flagged_top}", params={"q": "Zzyzxtestperson"})
            assert PATIENT_NAME_SHOWN in page.text
            assert http.get(f"/images/{seeded.flagged_top_sop}.png").status_code == 200
            http.get("/", params={"view": "read", "q": PATIENT_ID})
        api = httpx.get(base + "/api/worklist", headers=_bearer(token))
        assert api.status_code == 200
        assert httpx.get(base + "/api/worklist", headers=_bearer(token + "x")).status_code == 401
    finally:
        _stop(proc, log)
    lines = log.read_text().splitlines()
    assert any("GET /studies/1.2.826.0.1.7.2 200" in line for line in lines), lines[-20:]
    forbidden = [
        PASSWORD,
        "a wrong password, typed",
        token,
        "Zzyzxtestperson",
        "Quillon",
        PATIENT_ID,
        "19610304",
    ]
    for line in lines:
        for secret in forbidden:
            assert secret not in line, f"{secret!r} leaked into the log: {line}"


@requires_peer("openssl")
def test_run_web_serves_https_with_a_secure_cookie(
    db: Engine, services: Services, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    proc, port, log = _start_web(
        services, tmp_path, {"CXR_WEB_TLS_CERT": str(cert), "CXR_WEB_TLS_KEY": str(key)}
    )
    try:
        resp = _wait_for(f"https://127.0.0.1:{port}/sign-in", proc, log, verify=False)
        assert resp.status_code == 200
        assert "Secure" in resp.headers["set-cookie"]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        _stop(proc, log)


def test_cli_worklist_states_and_token_create(
    db: Engine, services: Services, seeded: Seeded
) -> None:
    env = services.env()
    made = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "token", "create", "cli-int", "--role",
         "radiologist"], env=env, capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    token = made.stdout.strip()
    assert token.startswith("cxr_")
    assert "\n" not in token
    assert "shown once" in made.stderr
    user = add_user(db, "ann")
    reading.record_answer(db, seeded.flagged_top, reading.Reader.from_user(user), "pneumonia")

    def listing(*args: str) -> list[dict[str, object]]:
        import json

        out = subprocess.run(
            [sys.executable, "-m", "cxr_triage", "worklist", "--json", *args],
            env=env, capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
        data = json.loads(out.stdout)
        assert isinstance(data, list)
        return data

    unread = listing()
    assert [e["study_instance_uid"] for e in unread] == list(seeded.order[1:])
    read = listing("--state", "read")
    assert [(e["study_instance_uid"], e["read_by"], e["finding"]) for e in read] == [
        (seeded.flagged_top, "ann", "pneumonia")
    ]
    assert {"status", "score", "flagged", "read_state", "read_at"} <= set(read[0])
    assert len(listing("--state", "all")) == 6
