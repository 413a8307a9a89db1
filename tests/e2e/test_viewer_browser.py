"""The radiograph viewer in a real browser: Playwright drives Debian's Chromium against a
real uvicorn server on real Postgres.

A radiologist opens a study whose radiograph is a 12-bit 1200 x 960 CR image: the page
paints the 512 px PNG, then the viewer loads the full-resolution modality values
(``/images/{sop}.u16``) into a canvas at the DICOM's Rows x Columns. A drag changes the
window (the canvas pixels change, read back with ``getImageData``), the wheel zooms around
the cursor (the heatmap beside it zooms along), a right-drag pans, ``r`` restores the
default window and scale (and does nothing while typing in the note), ``i`` inverts. A
screenshot of the page with a changed window is written to ``/tmp/viewer-wl.png`` (and the
test's tmp folder, and ``CXR_TEST_ARTEFACTS`` when set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.integration.reading_rows import PASSWORD
from tests.viewer_seed import COLUMNS, ROWS, WINDOW, replace_with_sixteen_bit
from tests.web_server import add_user, reset_accounts, seed_worklist, serve

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1360, "height": 900}
SCREENSHOT = Path("/tmp/viewer-wl.png")

pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402

#: Grey levels on a 16 x 16 grid over the canvas, read back from the drawn pixels.
SAMPLE = """c => {
  const ctx = c.getContext('2d');
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let j = 1; j < 16; j++) for (let i = 1; i < 16; i++) {
    const x = Math.floor(c.width * i / 16), y = Math.floor(c.height * j / 16);
    out.push(d[(y * c.width + x) * 4]);
  }
  return out;
}"""


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


def _state(figure: Locator) -> dict[str, str]:
    state: dict[str, str] = figure.evaluate("f => ({...f.dataset})")
    return state


def _wait_for(page: Page, figure: Locator, key: str, differs_from: str) -> None:
    """Until the viewer has painted a ``key`` other than ``differs_from``."""
    page.wait_for_function(
        "([f, k, v]) => f.dataset[k] !== v", arg=[figure.element_handle(), key, differs_from]
    )


def test_window_level_zoom_and_reset_in_chromium(
    engine: Engine, tmp_path: Path, browser: Browser
) -> None:
    db = reset_accounts(engine)
    storage = tmp_path / "instances"
    seeded = seed_worklist(db, storage)
    replace_with_sixteen_bit(storage, seeded.flagged_top, seeded.flagged_top_sop)
    add_user(db, "ann")
    with serve(db) as base_url:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        violations: list[str] = []
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto(base_url + "/")
        page.fill("#username", "ann")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(base_url + "/")
        page.goto(f"{base_url}/studies/{seeded.flagged_top}")

        figure = page.locator("figure.plain").first
        expect(figure).to_have_attribute("data-state", "ready")
        canvas = figure.locator("canvas.radiograph")
        expect(canvas).to_be_visible()
        expect(figure.locator("img")).to_be_hidden()  # the 512 px first paint, replaced
        state = _state(figure)
        assert (int(state["naturalWidth"]), int(state["naturalHeight"])) == (COLUMNS, ROWS)
        assert (float(state["center"]), float(state["width"])) == WINDOW
        assert state["zoom"] == "1"
        readout = figure.locator(".wl-readout")
        expect(readout).to_have_text(f"W {WINDOW[1]:.0f} L {WINDOW[0]:.0f} · zoom 100%")
        default_pixels = canvas.evaluate(SAMPLE)
        assert len(set(default_pixels)) > 10, "the radiograph is drawn"

        # drag right and up: a wider window, a lower level -> different grey levels
        box = canvas.bounding_box()
        assert box is not None
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 60, cy - 50, steps=6)
        page.mouse.up()
        _wait_for(page, figure, "center", state["center"])
        windowed = _state(figure)
        assert float(windowed["width"]) > WINDOW[1], "dragging right widens the window"
        assert float(windowed["center"]) < WINDOW[0], "dragging up lowers the level"
        assert windowed["zoom"] == "1"
        windowed_pixels = canvas.evaluate(SAMPLE)
        changed = sum(a != b for a, b in zip(default_pixels, windowed_pixels, strict=True))
        assert changed > len(default_pixels) // 2, "the window changed the drawn pixels"
        expect(readout).to_contain_text(f"W {float(windowed['width']):.0f} ")
        SCREENSHOT.unlink(missing_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        shutil.copy(SCREENSHOT, tmp_path / "viewer-wl.png")
        if target := os.environ.get("CXR_TEST_ARTEFACTS"):
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(SCREENSHOT, Path(target) / "viewer-wl.png")
        assert SCREENSHOT.stat().st_size > 10_000

        # wheel: zoom in around the cursor (the pixel under it stays put)
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, -400)
        _wait_for(page, figure, "zoom", "1")
        zoomed = float(_state(figure)["zoom"])
        assert zoomed > 1.5
        assert canvas.evaluate(SAMPLE) != windowed_pixels

        heat = page.locator(".heat img").first
        heat_scale = heat.evaluate("i => new DOMMatrix(getComputedStyle(i).transform).a")
        assert heat_scale == pytest.approx(zoomed, rel=1e-4), "the heatmap zooms along"

        # right-drag pans (the window stays)
        before = _state(figure)
        page.mouse.move(cx, cy)
        page.mouse.down(button="right")
        page.mouse.move(cx + 40, cy + 30, steps=4)
        page.mouse.up(button="right")
        _wait_for(page, figure, "panX", before["panX"])
        panned = _state(figure)
        assert float(panned["panX"]) == pytest.approx(float(before["panX"]) + 40)
        assert float(panned["panY"]) == pytest.approx(float(before["panY"]) + 30)
        assert (panned["center"], panned["width"]) == (before["center"], before["width"])

        # typing "r" in the note does not reset the viewer
        page.fill("#note", "")
        page.locator("#note").press("r")
        assert page.locator("#note").input_value() == "r"
        assert float(_state(figure)["zoom"]) == zoomed

        # "r" restores the default window and the whole image
        canvas.focus()
        page.keyboard.press("r")
        _wait_for(page, figure, "zoom", str(zoomed))
        reset = _state(figure)
        assert (float(reset["center"]), float(reset["width"])) == WINDOW
        assert (reset["zoom"], reset["panX"], reset["panY"]) == ("1", "0", "0")
        assert canvas.evaluate(SAMPLE) == default_pixels
        expect(readout).to_have_text(f"W {WINDOW[1]:.0f} L {WINDOW[0]:.0f} · zoom 100%")

        # "i" inverts the grey levels
        page.keyboard.press("i")
        _wait_for(page, figure, "invert", "false")
        inverted = canvas.evaluate(SAMPLE)
        assert all(abs((255 - a) - b) <= 1 for a, b in zip(default_pixels, inverted, strict=True))
        assert violations == []
