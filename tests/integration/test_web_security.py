"""Issue 20 over real HTTP: a real uvicorn (``tests.web_server.serve``), real Postgres.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes
all of 127/8 to lo), so "a flood from one address" and "the real user elsewhere" are two
real peers. Covered: per-(account, address) lock-outs, the per-address throttle (429 with
Retry-After), bounded password hashing without a held connection, unlock and password
change (CLI and page), token and session expiry, the server-side "score seen", claims by
POST only, audited refusals (rate-limited), HSTS over TLS only, and X-Forwarded-* believed
from trusted proxies only.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, text

from cxr_common.passwords import Passwords
from cxr_db import make_engine
from cxr_db.accounts import store as accounts
from cxr_db.accounts.tables import Role
from cxr_db.reading import store as reading
from cxr_db.reading.tables import ReadState
from cxr_triage import accounts_cli
from tests.conftest import REPO, Services
from tests.integration.reading_rows import PASSWORD, audit_after, audit_mark
from tests.web_server import (
    PASSWORDS,
    Seeded,
    add_token,
    add_user,
    csrf_of,
    reset_accounts,
    seed_worklist,
    self_signed_cert,
    serve,
    sign_in,
    web_config,
)
from worklist.config import WebConfig

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a brand new passphrase 2026"


@pytest.fixture
def db(engine: Engine) -> Engine:
    return reset_accounts(engine)


@pytest.fixture
def seeded(db: Engine) -> Seeded:
    return seed_worklist(db)


def client(base_url: str, addr: str = "127.0.0.1", **kw: Any) -> httpx.Client:
    """An HTTP client whose connections come from ``addr`` (a loopback address)."""
    transport = httpx.HTTPTransport(local_address=addr, verify=False)
    return httpx.Client(base_url=base_url, timeout=30, transport=transport, **kw)


def _sign_in_client(base_url: str, name: str, addr: str = "127.0.0.1") -> httpx.Client:
    """A client signed in as ``name`` (the caller closes it)."""
    http = client(base_url, addr)
    resp = sign_in(http, name)
    assert resp.status_code == 303, resp.text
    return http


@contextmanager
def _signed_in(base_url: str, name: str, addr: str = "127.0.0.1") -> Iterator[httpx.Client]:
    http = _sign_in_client(base_url, name, addr)
    try:
        yield http
    finally:
        http.close()


def _alert(resp: httpx.Response) -> str:
    return resp.text.split('role="alert">')[1].split("<")[0]


# ------------------------------------------------------------------ lock-outs, throttle


def test_a_flood_from_one_address_does_not_lock_out_the_real_user(db: Engine) -> None:
    """30 parallel wrong passwords from 127.0.0.2 lock ann *for 127.0.0.2*: she still
    signs in from 127.0.0.3; from 127.0.0.2 even her right password gets 429."""
    add_user(db, "ann")
    mark = audit_mark(db)
    with serve(db, web_config(sign_in_attempts_per_addr=100)) as url:

        def attack(_: int) -> int:
            with client(url, "127.0.0.2") as http:
                return sign_in(http, "ann", "not the password at all").status_code

        with ThreadPoolExecutor(max_workers=30) as pool:
            statuses = list(pool.map(attack, range(30)))
        assert set(statuses) <= {401, 429}, statuses
        assert 429 in statuses  # the fifth wrong password locked ann from there

        with client(url, "127.0.0.3") as real:
            resp = sign_in(real, "ann")
            assert resp.status_code == 303, resp.text
            assert real.get("/").status_code == 200

        with client(url, "127.0.0.2") as attacker:
            resp = sign_in(attacker, "ann")
            assert resp.status_code == 429
            assert 0 < int(resp.headers["retry-after"]) <= 900
            assert "locked until" in _alert(resp)
            assert "cxr_session" not in attacker.cookies
    entries = audit_after(db, mark)
    locked = [e for e in entries if e.action == "account_locked"]
    assert locked, "the lock-out is audited"
    assert {e.client_addr for e in locked} == {"127.0.0.2"}
    signed = [e for e in entries if e.action == "sign_in"]
    assert [e.client_addr for e in signed] == ["127.0.0.3"]


def test_a_name_with_no_account_locks_like_a_real_one(db: Engine) -> None:
    """Lock-outs do not tell which user names exist: five wrong passwords lock a made-up
    name from that address with the same answer as a real account's."""
    add_user(db, "ann")
    with serve(db) as url:
        answers = {}
        for name in ("ann", "nobody-here"):
            with client(url, "127.0.0.11") as http:
                statuses = [sign_in(http, name, "wrong wrong wrong").status_code for _ in range(6)]
                assert statuses == [401, 401, 401, 401, 429, 429], name
                resp = sign_in(http, name, "wrong wrong wrong")
                assert 890 <= int(resp.headers["retry-after"]) <= 900
                answers[name] = _alert(resp).split(" until ")[0]
        assert answers["ann"] == answers["nobody-here"]
        with client(url, "127.0.0.12") as elsewhere:
            assert sign_in(elsewhere, "nobody-here", "wrong wrong wrong").status_code == 401


def test_one_address_is_throttled_across_accounts_with_429_and_retry_after(
    db: Engine,
) -> None:
    add_user(db, "ann")
    add_user(db, "ben")
    mark = audit_mark(db)
    with serve(db, web_config(sign_in_attempts_per_addr=3, sign_in_window_s=600)) as url:
        with client(url, "127.0.0.4") as http:
            for name in ("ann", "ben", "nobody-here"):
                assert sign_in(http, name, "wrong wrong wrong").status_code == 401
            resp = sign_in(http, "ben")  # the right password: the address is throttled
            assert resp.status_code == 429
            assert 590 <= int(resp.headers["retry-after"]) <= 600
            assert "Too many failed sign-ins from your address" in _alert(resp)
            assert "cxr_session" not in http.cookies
        with client(url, "127.0.0.5") as other:  # another address is not affected
            assert sign_in(other, "ben").status_code == 303
    refused = [e for e in audit_after(db, mark) if e.action == "request_refused"]
    assert [(e.detail["kind"], e.detail["status"], e.client_addr) for e in refused] == [
        ("throttled", 429, "127.0.0.4")
    ]
    assert refused[0].target == "/sign-in"


class _GatedHasher(PasswordHasher):
    """argon2 that waits for ``gate`` before each verify (a slow hash, on demand)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.gate = threading.Event()
        self.waiting = threading.Semaphore(0)

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.waiting.release()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().verify(hash, password)


def test_password_hashing_is_bounded_and_holds_no_database_connection(
    db: Engine, services: Services
) -> None:
    """One hashing slot and a pool of one connection: while a sign-in hashes, the database
    still answers other requests; a second sign-in finds no slot and gets 503."""
    add_user(db, "ann")
    hasher = _GatedHasher()
    gated = Passwords(hasher, max_concurrent=1, wait_s=0.2)
    small = make_engine(services.database_url, pool_size=1)
    small.pool._max_overflow = 0  # type: ignore[attr-defined]
    try:
        with serve(small, WebConfig(passwords=gated)) as url:
            with client(url) as first, client(url) as second, client(url) as third:
                form = first.get("/sign-in")
                data = {"csrf_token": csrf_of(form.text), "username": "ann", "password": PASSWORD}
                with ThreadPoolExecutor(max_workers=1) as pool:
                    pending = pool.submit(first.post, "/sign-in", data=data)
                    assert hasher.waiting.acquire(timeout=30), "the sign-in never hashed"
                    # hashing now, holding the only slot: the one connection is free
                    health = third.get("/healthz")
                    assert health.status_code == 200, health.text
                    busy = sign_in(second, "ann")
                    assert busy.status_code == 503
                    assert busy.headers["retry-after"] == "5"
                    hasher.gate.set()
                    assert pending.result(timeout=30).status_code == 303
    finally:
        small.dispose()


def test_unlock_lifts_every_lock_out(db: Engine) -> None:
    add_user(db, "ann")
    mark = audit_mark(db)
    with serve(db) as url:
        with client(url, "127.0.0.6") as http:
            statuses = [sign_in(http, "ann", "wrong wrong wrong").status_code for _ in range(5)]
            assert statuses == [401, 401, 401, 401, 429]
            assert sign_in(http, "ann").status_code == 429
            user = accounts.get_user(db, "ann")
            assert user is not None
            assert user.locked_until is not None
            out = io.StringIO()
            rc = accounts_cli.user_unlock(db, argparse.Namespace(name="ann"), stdout=out)
            assert rc == 0
            assert "lifted from 1 client address" in out.getvalue()
            assert sign_in(http, "ann").status_code == 303
    user = accounts.get_user(db, "ann")
    assert user is not None
    assert user.locked_until is None
    assert user.failed_logins == 0
    unlocks = [e for e in audit_after(db, mark) if e.action == "account_unlock"]
    assert [(e.target, e.detail) for e in unlocks] == [("ann", {"addresses_locked": 1})]
    with pytest.raises(accounts.UnknownUserError):
        accounts_cli.user_unlock(db, argparse.Namespace(name="nobody"), stdout=io.StringIO())


def test_cli_user_unlock_and_password_as_commands(db: Engine, services: Services) -> None:
    add_user(db, "ann")
    env = services.env()
    done = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "user", "password", "ann"],
        input=NEW_PASSWORD + "\n", env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert NEW_PASSWORD not in done.stdout + done.stderr
    ok = accounts.sign_in(
        db, "ann", NEW_PASSWORD, passwords=PASSWORDS, policy=accounts.SignInPolicy()
    )
    assert ok.ok
    weak = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "user", "password", "ann"],
        input="short\n", env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert weak.returncode != 0
    assert "too short" in weak.stderr
    unlocked = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "user", "unlock", "ann"],
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert unlocked.returncode == 0, unlocked.stderr
    assert "unlocked" in unlocked.stdout


# ------------------------------------------------------------------ password change page


def test_password_change_page(db: Engine) -> None:
    add_user(db, "ann")
    mark = audit_mark(db)
    with serve(db) as url:
        other = _sign_in_client(url, "ann", "127.0.0.7")  # another session of ann's
        with _signed_in(url, "ann") as http:
            page = http.get("/account/password")
            assert page.status_code == 200
            token = csrf_of(page.text)

            def change(**fields: str) -> httpx.Response:
                return http.post("/account/password", data={"csrf_token": token, **fields})

            no_csrf = http.post(
                "/account/password",
                data={"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                      "repeat_password": NEW_PASSWORD},
            )  # fmt: skip
            assert no_csrf.status_code == 403
            wrong = change(
                current_password="not my password",
                new_password=NEW_PASSWORD,
                repeat_password=NEW_PASSWORD,
            )
            assert wrong.status_code == 403
            assert "current password is wrong" in _alert(wrong)
            differ = change(
                current_password=PASSWORD, new_password=NEW_PASSWORD, repeat_password="x"
            )
            assert differ.status_code == 422
            weak = change(current_password=PASSWORD, new_password="short", repeat_password="short")
            assert weak.status_code == 422
            assert "too short" in _alert(weak)
            done = change(
                current_password=PASSWORD, new_password=NEW_PASSWORD, repeat_password=NEW_PASSWORD
            )
            assert done.status_code == 200
            assert "Password changed" in done.text
            assert http.get("/").status_code == 200  # this session lives on
        # the other session ended; the old password no longer works, the new one does
        assert other.get("/", follow_redirects=False).headers["location"].startswith("/sign-in")
        other.close()
        with client(url, "127.0.0.8") as again:
            assert sign_in(again, "ann").status_code == 401
            assert sign_in(again, "ann", NEW_PASSWORD).status_code == 303
    actions = [e.action for e in audit_after(db, mark)]
    assert actions.count("password_change") == 1
    assert actions.count("password_change_failed") == 1
    change_row = next(e for e in audit_after(db, mark) if e.action == "password_change")
    assert change_row.detail["sessions_ended"] == 1
    for entry in audit_after(db, mark):
        assert NEW_PASSWORD not in str(entry.detail)
        assert PASSWORD not in str(entry.detail)


def test_password_page_needs_a_session(db: Engine) -> None:
    token = add_token(db, "ris")
    with serve(db) as url, client(url) as http:
        resp = http.get("/account/password", follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/sign-in")
        bearer = http.get("/account/password", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 403


# ------------------------------------------------------------------ expiry


def test_expired_tokens_and_sessions_are_refused_server_side(db: Engine) -> None:
    add_user(db, "ann")
    created = accounts.create_token(
        db, "ris", Role.RADIOLOGIST, actor=accounts_cli.cli_actor(), lifetime=timedelta(days=1)
    )
    assert created.info.expires_at is not None
    with serve(db) as url, client(url) as http:
        auth = {"Authorization": f"Bearer {created.token}"}
        assert http.get("/api/worklist", headers=auth).status_code == 200
        with db.begin() as conn:
            conn.execute(text("UPDATE api_tokens SET expires_at = now() - interval '1 second'"))
        expired = http.get("/api/worklist", headers=auth)
        assert expired.status_code == 401
        with _signed_in(url, "ann") as browser:
            assert browser.get("/").status_code == 200
            with db.begin() as conn:
                conn.execute(text("UPDATE web_sessions SET expires_at = now()"))
            resp = browser.get("/", follow_redirects=False)
            assert resp.status_code == 303
            assert resp.headers["location"].startswith("/sign-in")
    with pytest.raises(ValueError, match="positive"):
        accounts.create_token(
            db, "bad", Role.RADIOLOGIST, actor=accounts_cli.cli_actor(), lifetime=timedelta(0)
        )


def test_tokens_older_than_the_site_allows_are_refused(db: Engine) -> None:
    token = add_token(db, "ris")  # no expiry of its own
    with db.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET created_at = now() - interval '31 days'"))
    auth = {"Authorization": f"Bearer {token}"}
    with serve(db, web_config(token_max_age=timedelta(days=30))) as url, client(url) as http:
        resp = http.get("/api/worklist", headers=auth)
        assert resp.status_code == 401
        assert "older than the site allows" in resp.json()["detail"]
    with serve(db, web_config(token_max_age=timedelta(days=60))) as url, client(url) as http:
        assert http.get("/api/worklist", headers=auth).status_code == 200


def test_cli_token_create_sets_an_expiry(db: Engine) -> None:
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(name="ris", role="radiologist", expires_days=7)
    assert accounts_cli.token_create(db, args, stdout=out, stderr=err) == 0
    assert "expires" in err.getvalue()
    (info,) = accounts.list_tokens(db)
    assert info.expires_at is not None
    assert timedelta(days=6, hours=23) < info.expires_at - info.created_at <= timedelta(days=7)
    never = argparse.Namespace(name="forever", role="ops", expires_days=0)
    assert accounts_cli.token_create(db, never, stdout=io.StringIO(), stderr=err) == 0
    assert "never expires" in err.getvalue()
    with pytest.raises(argparse.ArgumentTypeError):
        accounts_cli._days_arg("-1")


# ------------------------------------------------------------------ answers and claims


def test_score_and_model_seen_come_from_the_server(db: Engine, seeded: Seeded) -> None:
    add_user(db, "ann")
    token = add_token(db, "ris")
    top, second = seeded.flagged_top, seeded.order[1]
    with serve(db) as url, _signed_in(url, "ann") as http:
        page = http.get(f"/studies/{top}")
        assert 'name="score"' not in page.text
        assert 'name="model_version"' not in page.text
        resp = http.post(
            f"/studies/{top}/answer",
            data={"csrf_token": csrf_of(page.text), "finding": "pneumonia",
                  "score": "0.01", "model_version": "made-up-model"},
        )  # fmt: skip
        assert resp.status_code == 303
        api = http.post(
            f"/api/studies/{second}/answer",
            json={"finding": "other", "score": 0.02, "model_version": "also-made-up"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert api.status_code == 201, api.text
        assert api.json()["score"] == pytest.approx(0.655)
        assert api.json()["model_version"] == "2026.11-cal1"
    (answer,) = reading.answers_for(db, top)
    assert answer.score == pytest.approx(0.912)
    assert answer.model_version == "2026.11-cal1"
    (other,) = reading.answers_for(db, second)
    assert other.score == pytest.approx(0.655)


def test_claims_are_made_by_post_only(db: Engine, seeded: Seeded) -> None:
    add_user(db, "ann")
    add_user(db, "ben")
    top = seeded.flagged_top
    mark = audit_mark(db)
    with serve(db) as url, _signed_in(url, "ann") as ann, _signed_in(url, "ben") as ben:
        page = ann.get(f"/studies/{top}")
        assert page.status_code == 200
        assert 'id="claim-form"' in page.text
        assert reading.read_state(db, top).state is ReadState.UNREAD, "a GET claims nothing"
        forged = ann.post(f"/studies/{top}/claim")  # no CSRF token (a cross-site form)
        assert forged.status_code == 403
        assert reading.read_state(db, top).state is ReadState.UNREAD
        token = csrf_of(page.text)
        claimed = ann.post(
            f"/studies/{top}/claim", headers={"X-CSRF-Token": token, "Accept": "application/json"}
        )
        assert claimed.status_code == 200, claimed.text
        body = claimed.json()
        assert body["claimed"] is True
        assert body["claimed_by"] == "ann"
        assert body["message"].startswith("In progress by you until")
        state = reading.read_state(db, top)
        assert (state.state, state.claimed_by) == (ReadState.IN_PROGRESS, "ann")
        ben_page = ben.get(f"/studies/{top}")
        assert "In progress by ann" in ben_page.text
        assert 'id="claim-form"' not in ben_page.text
        taken = ben.post(f"/studies/{top}/claim", headers={"X-CSRF-Token": csrf_of(ben_page.text)})
        assert taken.status_code == 409
        assert taken.json()["claimed_by"] == "ann"
        # the page's button (no script): a form, sent back to the study page
        second = seeded.order[1]
        form = ben.post(
            f"/studies/{second}/claim", data={"csrf_token": csrf_of(ben_page.text)},
            follow_redirects=False,
        )  # fmt: skip
        assert form.status_code == 303
        assert form.headers["location"] == f"/studies/{second}"
        assert reading.read_state(db, second).claimed_by == "ben"
        assert (
            ben.post(
                "/studies/9.9.9.9/claim", data={"csrf_token": csrf_of(ben_page.text)}
            ).status_code
            == 404
        )
    claims = [e for e in audit_after(db, mark) if e.action == "study_claim"]
    assert [(e.actor, e.target) for e in claims] == [("ann", top), ("ben", seeded.order[1])]


def test_worklist_views_are_audited(db: Engine, seeded: Seeded, services: Services) -> None:
    add_user(db, "ann")
    token = add_token(db, "ris")
    mark = audit_mark(db)
    with serve(db) as url, _signed_in(url, "ann") as http:
        assert http.get("/?q=ACC-1002").status_code == 200
        assert http.get("/", headers={"X-CXR-Background": "refresh"}).status_code == 200
        api = http.get(
            "/api/worklist", params={"state": "all"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert api.status_code == 200
    cli = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "worklist", "--json"],
        env=services.env(), capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    views = [e for e in audit_after(db, mark) if e.action == "worklist_view"]
    assert [(e.actor, e.detail["source"]) for e in views][:3] == [
        ("ann", "page"),
        ("ann", "page"),
        ("ris", "api"),
    ]
    assert views[0].detail["searched"] is True
    assert "ACC-1002" not in str(views[0].detail)
    assert views[1].detail.get("background") is True
    assert views[2].detail["entries"] == len(seeded.order)
    assert views[3].actor.startswith("cli:")
    assert views[3].detail["source"] == "cli"


# ------------------------------------------------------------------ refused requests


def test_refused_requests_are_audited_rate_limited(db: Engine) -> None:
    add_user(db, "ann")
    add_user(db, "root", Role.ADMIN)
    mark = audit_mark(db)
    with serve(db) as url:
        with client(url, "127.0.0.9") as prober:
            for _ in range(5):
                assert prober.get("/api/worklist").status_code == 401
            assert prober.get("/healthz", headers={"Host": "attacker.example"}).status_code == 400
            assert prober.get("/healthz", headers={"Host": "attacker.example"}).status_code == 400
            bad = prober.get("/api/worklist", headers={"Authorization": "Bearer cxr_nope"})
            assert bad.status_code == 401
        with _signed_in(url, "ann", "127.0.0.10") as ann:
            assert ann.get("/admin/audit").status_code == 403
            assert ann.post("/studies/1.2.3/release", data={"csrf_token": "x"}).status_code == 403
        with _signed_in(url, "root") as admin:
            page = admin.get("/admin/audit", params={"action": "request_refused"})
            assert page.status_code == 200
            summary = page.text[page.text.index('id="refusals"') :]
            assert "<td>127.0.0.9</td><td>unauthenticated</td>" in summary
            assert "<td>127.0.0.9</td><td>host</td>" in summary
    refused = [e for e in audit_after(db, mark) if e.action == "request_refused"]
    got = [(e.client_addr, e.actor, e.detail["kind"], e.detail["status"]) for e in refused]
    assert got == [
        ("127.0.0.9", "-", "unauthenticated", 401),  # 6 refusals, 1 row
        ("127.0.0.9", "-", "host", 400),  # 2 refusals, 1 row
        ("127.0.0.10", "ann", "forbidden", 403),
        ("127.0.0.10", "ann", "csrf", 403),
    ]
    assert refused[0].target == "/api/worklist"
    assert refused[2].target == "/admin/audit"


# ------------------------------------------------------------------ TLS and proxies


def test_hsts_over_tls_only(db: Engine, tmp_path: Path) -> None:
    with serve(db, tls=self_signed_cert(tmp_path)) as url, client(url) as https:
        assert url.startswith("https://")
        resp = https.get("/sign-in")
        assert resp.headers["strict-transport-security"].startswith("max-age=31536000")
        assert "Secure" in resp.headers["set-cookie"]
    with serve(db) as url, client(url) as plain:
        resp = plain.get("/sign-in")
        assert "strict-transport-security" not in resp.headers
        assert "Secure" not in resp.headers["set-cookie"]
        spoofed = plain.get("/sign-in", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in spoofed.headers, "no proxy is trusted"


def test_forwarded_headers_believed_from_trusted_proxies_only(db: Engine) -> None:
    add_user(db, "ann")
    forwarded = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}

    def sign_in_via(config: Any) -> tuple[str | None, httpx.Response]:
        mark = audit_mark(db)
        with serve(db, config) as url, client(url, headers=forwarded) as http:
            form = http.get("/sign-in")
            # a Secure cookie is not sent back over plain http: the proxy would, over TLS
            cookie = form.cookies["cxr_signin"]
            resp = http.post(
                "/sign-in",
                data={"csrf_token": csrf_of(form.text), "username": "ann", "password": PASSWORD},
                headers={"Cookie": f"cxr_signin={cookie}"},
            )
            assert resp.status_code == 303, resp.text
        (entry,) = [e for e in audit_after(db, mark) if e.action == "sign_in"]
        return entry.client_addr, resp

    addr, resp = sign_in_via(web_config(trusted_proxies=("10.9.9.0/24",)))
    assert addr == "127.0.0.1", "X-Forwarded-For from an untrusted peer is ignored"
    assert "Secure" not in resp.headers["set-cookie"]
    assert "strict-transport-security" not in resp.headers
    addr, resp = sign_in_via(web_config(trusted_proxies=("127.0.0.0/8",)))
    assert addr == "203.0.113.5", "the real client, as the trusted proxy says"
    assert "Secure" in resp.headers["set-cookie"]
    assert resp.headers["strict-transport-security"].startswith("max-age=")


def test_trusted_proxies_setting_is_validated() -> None:
    from pydantic import ValidationError

    from cxr_common.settings import WebSettings
    from worklist.config import WebConfig

    settings = WebSettings(web_trusted_proxies="10.0.0.0/8, 192.168.1.7")  # type: ignore[arg-type]
    assert WebConfig.from_settings(settings).trusted_proxies == ("10.0.0.0/8", "192.168.1.7")
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        WebSettings(web_trusted_proxies="proxy.example.org")  # type: ignore[arg-type]
