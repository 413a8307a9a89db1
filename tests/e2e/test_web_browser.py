"""The reading workflow in a real browser: Playwright drives Debian's Chromium against a
real uvicorn server on real Postgres.

A radiologist signs in, sees the flagged unread studies first, opens one (claiming it),
switches the viewer to overlay, hides and shows the heatmap and moves its opacity, records
an answer, and sees the study leave the unread view; a second radiologist sees it "in
progress" meanwhile; sign-out ends the session; an admin finds the answer in the audit log.

Screenshots of the worklist and of a study page are written to the test's tmp folder and,
when ``CXR_TEST_ARTEFACTS`` names a folder, copied there.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import Engine

from cxr_db.accounts.tables import Role
from cxr_db.reading import store as reading
from cxr_triage.worklist_view import DISCLAIMER
from tests.integration.reading_rows import PASSWORD, db_now
from tests.peers import requires_peer
from tests.web_server import (
    PATIENT_NAME_SHOWN,
    add_user,
    reset_accounts,
    seed_worklist,
    serve,
)

pytestmark = [pytest.mark.e2e, requires_peer("chromium")]

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1360, "height": 900}


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


def _artefact(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("CXR_TEST_ARTEFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        assert img.size[0] == VIEWPORT["width"]
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "the screenshot is blank"
    return path


def _sign_in(page: Page, base_url: str, name: str) -> None:
    page.goto(base_url + "/")
    expect(page).to_have_url(f"{base_url}/sign-in?next=%2F")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")


def _csp_violations(page: Page) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda msg: found.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return found


def test_reading_workflow_in_chromium(engine: Engine, tmp_path: Path, browser: Browser) -> None:
    db = reset_accounts(engine)
    started = db_now(db)  # the audit log outlives tests: look only at this one's entries
    seeded = seed_worklist(db, tmp_path / "instances")
    for name in ("ann", "ben"):
        add_user(db, name)
    add_user(db, "ada", Role.ADMIN)
    with serve(db) as base_url:
        ann = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations = _csp_violations(ann)
        _sign_in(ann, base_url, "ann")
        expect(ann).to_have_url(base_url + "/")
        expect(ann.locator(".disclaimer")).to_have_text(DISCLAIMER)
        rows = ann.locator("table").first.locator("tbody tr")
        order = rows.evaluate_all("rs => rs.map(r => r.dataset.study)")
        assert order[:2] == [seeded.flagged_top, seeded.order[1]], "flagged unread first"
        expect(rows.nth(0)).to_contain_text("LIKELY POSITIVE")
        expect(rows.nth(1)).to_contain_text("LIKELY POSITIVE")
        expect(ann.locator("#not-scored")).to_be_visible()
        _artefact(ann, tmp_path, "worklist.png")

        # open the top study: the page claims it (a POST), and the viewer's controls come alive
        rows.nth(0).locator("a.study").click()
        expect(ann).to_have_url(f"{base_url}/studies/{seeded.flagged_top}")
        expect(ann.locator("[data-patient]")).to_contain_text(PATIENT_NAME_SHOWN)
        expect(ann.locator("#claim-status")).to_contain_text("In progress by you")
        assert reading.read_state(db, seeded.flagged_top).claimed_by == "ann"
        viewer = ann.locator(".viewer").first
        controls = viewer.locator(".controls")
        expect(controls).to_be_visible()
        ann.wait_for_function(  # both images decoded (radiograph and heatmap)
            "() => [...document.querySelectorAll('.viewer img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        assert viewer.locator("img").count() == 2
        heat = viewer.locator(".heat")
        expect(viewer).to_have_class("viewer side")
        _artefact(ann, tmp_path, "study-side-by-side.png")
        controls.locator("input.mode[value=overlay]").check()
        expect(viewer).to_have_class("viewer overlay")
        expect(viewer.locator(".plain")).to_have_attribute("data-state", "ready")
        plain_box = viewer.locator(".plain canvas.radiograph").bounding_box()  # full res
        heat_box = heat.locator("img").bounding_box()
        assert plain_box is not None
        assert heat_box is not None
        assert (plain_box["x"], plain_box["y"]) == (heat_box["x"], heat_box["y"]), "overlaid"
        controls.locator("input.opacity").fill("25")
        assert heat.locator("img").evaluate("i => i.style.opacity") == "0.25"
        expect(controls.locator(".opacity-value")).to_have_text("25%")
        controls.locator("input.show-heat").uncheck()
        expect(heat).to_have_css("visibility", "hidden")
        controls.locator("input.show-heat").check()
        expect(heat).to_have_css("visibility", "visible")
        controls.locator("input.opacity").fill("60")
        _artefact(ann, tmp_path, "study.png")

        # meanwhile a second radiologist sees it in progress and cannot answer
        ben = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        _sign_in(ben, base_url, "ben")
        row = ben.locator(f'tr[data-study="{seeded.flagged_top}"]')
        expect(row).to_contain_text("in progress by ann")
        row.locator("a.study").click()
        expect(ben.locator(".notice.warn")).to_contain_text("In progress by ann")
        expect(ben.locator("#answer-form")).to_have_count(0)

        # ann answers: the study leaves the unread view and shows in the read view
        ann.check("input[name=finding][value=pneumonia]")
        ann.fill("#note", "right lower lobe consolidation")
        ann.click("button[form=answer-form]")
        # the next unread study opens (worklist order), saying the answer was saved
        expect(ann).to_have_url(f"{base_url}/studies/{seeded.order[1]}?saved={seeded.flagged_top}")
        expect(ann.locator("[data-saved]")).to_contain_text("Answer saved")
        ann.click("a.back")
        expect(ann.locator(f'tr[data-study="{seeded.flagged_top}"]')).to_have_count(0)
        first = ann.locator("table").first.locator("tbody tr").nth(0)
        expect(first).to_have_attribute("data-study", seeded.order[1])
        ann.click('.tabs a[href="/?view=read"]')
        read_row = ann.locator(f'tr[data-study="{seeded.flagged_top}"]')
        expect(read_row).to_contain_text("read by ann: pneumonia")
        info = reading.read_state(db, seeded.flagged_top)
        assert (info.state.value, info.read_by) == ("read", "ann")

        # sign-out ends the session: the worklist is behind the sign-in again
        ann.click("header button:has-text('Sign out')")
        expect(ann).to_have_url(base_url + "/sign-in")
        ann.goto(base_url + "/")
        expect(ann).to_have_url(f"{base_url}/sign-in?next=%2F")

        # an admin sees who looked at the study and who answered
        ada = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        _sign_in(ada, base_url, "ada")
        expect(ada).to_have_url(base_url + "/admin/audit")
        ada.fill("input[name=target]", seeded.flagged_top)
        ada.fill("input[name=since]", started.isoformat())
        ada.click("form.filters button")
        answer = ada.locator('tr[data-action="answer"]')
        expect(answer).to_have_count(1)
        expect(answer).to_contain_text("ann")
        expect(ada.locator('tr[data-action="study_view"]')).to_have_count(2)  # ann and ben
        _artefact(ada, tmp_path, "audit.png")
        assert PATIENT_NAME_SHOWN not in ada.content()
        assert violations == [], violations
