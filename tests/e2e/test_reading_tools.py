"""The reading tools in a real browser (issue 19, part 4): Playwright drives Debian's
Chromium against a real uvicorn server on real Postgres.

- saving an answer opens the next unread study, in worklist priority order;
- keyboard shortcuts choose a finding and save, and do nothing while typing a note;
- worklist rows show the patient's age and how long the study has waited;
- the worklist refreshes itself, announces a newly flagged study in the title and a live
  region, and the session still expires (a refresh is not activity);
- a typed answer survives a session expiry and the sign-in that follows.

The worklist screenshot is written to the test's tmp folder and, when
``CXR_TEST_ARTEFACTS`` names a folder, copied there.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, update

from cxr_db.accounts.store import SignInPolicy
from cxr_db.accounts.tables import WebSession
from cxr_db.instances import writes as repo
from cxr_db.instances.tables import Study
from cxr_db.reading import store as reading
from tests.db_rows import prediction, record
from tests.integration.reading_rows import PASSWORD
from tests.web_server import add_user, reset_accounts, seed_worklist, serve, web_config

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1360, "height": 900}

pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield launched
        finally:
            launched.close()


def _csp_violations(page: Page) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda msg: found.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return found


def _sign_in(page: Page, base_url: str, path: str = "/", name: str = "ann") -> None:
    """Open ``path``, get sent to the sign-in, sign in and land back on ``path``."""
    page.goto(base_url + path)
    expect(page).to_have_url(re.compile(re.escape(base_url + "/sign-in?next=")))
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base_url + path)


def _flagged(engine: Engine, study: str, accession: str, p: float = 0.97) -> None:
    iid = record(engine, study, study + ".1", accession)
    repo.record_prediction(engine, iid, prediction(p, threshold=0.42))


def test_saving_an_answer_opens_the_next_unread_study_in_priority_order(
    engine: Engine, browser: Browser
) -> None:
    db = reset_accounts(engine)
    seeded = seed_worklist(db)
    add_user(db, "ann")
    ben = add_user(db, "ben")
    # ben holds the failed study: it is not anyone else's next
    held = seeded.order[2]
    reading.claim_study(db, held, ben)
    with serve(db) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations = _csp_violations(page)
        _sign_in(page, base_url)
        page.locator("table").first.locator("tbody tr a.study").first.click()
        expect(page).to_have_url(f"{base_url}/studies/{seeded.order[0]}")
        # worklist order, minus the study ben holds and the one still being scored
        pending = seeded.order[4]
        expected = [s for s in seeded.order if s not in (held, pending)]
        for current, following in zip(expected, expected[1:], strict=False):
            page.check("input[name=finding][value=no_pneumonia]")
            page.click("#save-answer")
            expect(page).to_have_url(f"{base_url}/studies/{following}?saved={current}")
            expect(page.locator("[data-saved]")).to_contain_text(
                f"Answer saved for study {current}"
            )
        page.check("input[name=finding][value=other]")
        page.click("#save-answer")
        expect(page).to_have_url(f"{base_url}/?saved={expected[-1]}")  # none left: the list
        for uid in expected:
            assert reading.read_state(db, uid).read_by == "ann"
        assert reading.read_state(db, held).claimed_by == "ben"
        assert reading.read_state(db, pending).state.value == "unread"
        assert violations == [], violations


def test_shortcuts_choose_a_finding_and_save_but_not_while_typing(
    engine: Engine, browser: Browser
) -> None:
    db = reset_accounts(engine)
    seeded = seed_worklist(db)
    add_user(db, "ann")
    with serve(db) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations = _csp_violations(page)
        top = seeded.flagged_top
        _sign_in(page, base_url, f"/studies/{top}")
        legend = page.locator("#shortcut-legend")
        for key, words in (("1", "pneumonia"), ("2", "no pneumonia"), ("3", "other")):
            expect(legend).to_contain_text(f"{key} {words}")
        expect(legend).to_contain_text("s save")
        expect(legend).to_contain_text("n next unread study")
        expect(legend).to_contain_text("u release")
        page.keyboard.press("1")
        expect(page.locator("input[value=pneumonia]")).to_be_checked()
        # typing a note: the keys are text, not shortcuts
        page.click("#note")
        page.keyboard.type("1 2 3 s n u effusion")
        expect(page.locator("#note")).to_have_value("1 2 3 s n u effusion")
        expect(page.locator("input[value=pneumonia]")).to_be_checked()
        expect(page).to_have_url(f"{base_url}/studies/{top}")
        page.locator("aside h2").first.click()  # leave the text field
        page.keyboard.press("3")
        expect(page.locator("input[value=other]")).to_be_checked()
        page.keyboard.press("s")
        expect(page).to_have_url(f"{base_url}/studies/{seeded.order[1]}?saved={top}")
        (answer,) = reading.answers_for(db, top)
        assert (answer.finding.value, answer.note) == ("other", "1 2 3 s n u effusion")
        # the page claims the study it shows (a POST from its script; the GET did not)
        expect(page.locator("#claim-status")).to_contain_text("In progress by you")
        assert reading.read_state(db, seeded.order[1]).claimed_by == "ann"
        # n skips to the next unread study; u releases the one held
        page.keyboard.press("n")
        expect(page).to_have_url(f"{base_url}/studies/{seeded.order[2]}")
        expect(page.locator("#claim-status")).to_contain_text("In progress by you")
        expect(page.locator("#release-form")).to_be_visible()
        page.keyboard.press("u")
        expect(page).to_have_url(base_url + "/")
        assert reading.read_state(db, seeded.order[2]).state.value == "unread"
        assert violations == [], violations


def test_worklist_rows_show_age_and_time_since_arrival(
    engine: Engine, browser: Browser, tmp_path: Path
) -> None:
    db = reset_accounts(engine)
    seed_worklist(db)
    add_user(db, "ann")
    aged = {
        "1.2.826.0.1.9.1": ("ACC-2001", "age 54 y; within the validated population (18-64 y)"),
        "1.2.826.0.1.9.2": ("ACC-2002", "age 6 mo, view AP; model validated for 18-64 y"),
    }
    tail = {"in_scope": "the score triages", "outside": "read normally, this score does not triage"}
    for study, (accession, reason) in aged.items():
        iid = record(db, study, study + ".1", accession)
        population = "in_scope" if "within" in reason else "outside"
        repo.record_prediction(
            db,
            iid,
            prediction(0.8, threshold=0.42),
            triage=population == "in_scope",
            population=repo.PopulationNote(population, reason + ": " + tail[population]),
        )
    waits = {
        "1.2.826.0.1.9.1": timedelta(minutes=12, seconds=5),
        "1.2.826.0.1.9.2": timedelta(hours=3, minutes=2),
    }
    with db.begin() as conn:
        for study, wait in waits.items():
            conn.execute(
                update(Study)
                .where(Study.study_instance_uid == study)
                .values(first_received_at=func.now() - wait)
            )
    with serve(db) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        _sign_in(page, base_url)
        header = page.locator("table.worklist").first.locator("thead")
        expect(header).to_contain_text("Age")
        expect(header).to_contain_text("Waiting")
        adult = page.locator('tr[data-study="1.2.826.0.1.9.1"]')
        expect(adult.locator("td.age")).to_have_text("54 y")
        expect(adult.locator(".waiting")).to_have_text("12 min")
        infant = page.locator('tr[data-study="1.2.826.0.1.9.2"]')
        expect(infant.locator("td.age")).to_have_text("6 mo")
        expect(infant.locator(".waiting")).to_have_text("3 h")
        # just arrived, no population check stored: a dash for the age
        fresh = page.locator('tr[data-study="1.2.826.0.1.7.2"]')
        expect(fresh.locator("td.age")).to_have_text("–")
        expect(fresh.locator(".waiting")).to_have_text(re.compile(r"^(< 1 min|\d+ min)$"))
        path = tmp_path / "worklist-rows.png"
        page.screenshot(path=str(path), full_page=True)
        target = os.environ.get("CXR_TEST_ARTEFACTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(target) / path.name)
        assert path.stat().st_size > 10_000


def test_the_worklist_refreshes_announces_a_new_flagged_study_and_still_expires(
    engine: Engine, browser: Browser
) -> None:
    db = reset_accounts(engine)
    seed_worklist(db)
    add_user(db, "ann")
    idle = timedelta(seconds=6)
    config = web_config(refresh_s=0.4, policy=SignInPolicy(idle_timeout=idle))
    with serve(db, config) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations = _csp_violations(page)
        refreshes: list[str] = []
        page.on(
            "request",
            lambda r: (
                refreshes.append(r.url) if r.headers.get("x-cxr-background") == "refresh" else None
            ),
        )
        _sign_in(page, base_url)
        expect(page).to_have_title("Unread · Worklist · CXR Triage")
        expect(page.locator("#refresh-note")).to_be_visible()
        expect(page.locator("#sound-toggle")).not_to_be_checked()  # sound is off by default
        _flagged(db, "1.2.826.0.1.8.1", "ACC-NEW-1")
        expect(page).to_have_title("(1) Unread · Worklist · CXR Triage")
        expect(page.locator("#announce")).to_have_text("New likely positive study: ACC-NEW-1")
        row = page.locator('tr[data-study="1.2.826.0.1.8.1"]')
        expect(row).to_have_class(re.compile(r"\bnew\b"))
        expect(row).to_contain_text("LIKELY POSITIVE")
        # a study that is not flagged appears without an announcement
        iid = record(db, "1.2.826.0.1.8.2", "1.2.826.0.1.8.2.1", "ACC-ROUTINE")
        repo.record_prediction(db, iid, prediction(0.1, threshold=0.42))
        expect(page.locator('tr[data-study="1.2.826.0.1.8.2"]')).to_have_count(1)
        expect(page).to_have_title("(1) Unread · Worklist · CXR Triage")
        # nothing but refreshes from here: the session ends at its idle timeout regardless
        expect(page).to_have_url(f"{base_url}/sign-in?next=%2F", timeout=30_000)
        assert len(refreshes) >= 5, refreshes
        assert violations == [], violations


def test_a_typed_answer_survives_a_session_expiry_and_sign_in(
    engine: Engine, browser: Browser
) -> None:
    db = reset_accounts(engine)
    seeded = seed_worklist(db)
    add_user(db, "ann")
    top = seeded.flagged_top
    with serve(db) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations = _csp_violations(page)
        _sign_in(page, base_url, f"/studies/{top}")
        # the page's claim (a POST) is done: it touches the session like any request
        expect(page.locator("#claim-status")).to_contain_text("In progress by you")
        page.check("input[name=finding][value=no_pneumonia]")
        page.fill("#note", "clear lungs; old rib fracture")
        with db.begin() as conn:  # the session goes idle past its timeout
            conn.execute(update(WebSession).values(last_seen_at=func.now() - timedelta(days=1)))
        page.click("#save-answer")
        expect(page).to_have_url(re.compile(re.escape(f"{base_url}/sign-in?next=")))
        assert "/studies/" in page.locator("input[name=next]").input_value()
        assert reading.answers_for(db, top) == []
        page.fill("#username", "ann")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base_url}/studies/{top}")
        expect(page.locator("input[value=no_pneumonia]")).to_be_checked()
        expect(page.locator("#note")).to_have_value("clear lungs; old rib fracture")
        expect(page.locator("#draft-note")).to_contain_text("unsaved answer was restored")
        page.click("#save-answer")
        expect(page).to_have_url(f"{base_url}/studies/{seeded.order[1]}?saved={top}")
        (answer,) = reading.answers_for(db, top)
        assert (answer.finding.value, answer.note) == (
            "no_pneumonia",
            "clear lungs; old rib fracture",
        )
        drafts = page.evaluate(
            "() => Object.keys(sessionStorage).filter(k => k.startsWith('cxr-draft:'))"
        )
        assert drafts == []
        # a draft left on a study is gone after signing out
        page.fill("#note", "half-typed")
        assert page.evaluate("() => Object.keys(sessionStorage).length") == 1
        page.click("header button:has-text('Sign out')")
        expect(page).to_have_url(base_url + "/sign-in")
        assert page.evaluate("() => Object.keys(sessionStorage).length") == 0
        assert violations == [], violations
