"""The web worklist in a real browser: Debian's headless Chromium renders the page."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine

from cxr_triage.worklist_view import DISCLAIMER
from tests.web_server import seed_worklist, serve

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 900)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


_NO_CHROMIUM = "needs /usr/bin/chromium (apt-get install chromium)"


@pytest.mark.skipif(not CHROMIUM.exists(), reason=_NO_CHROMIUM)
def test_worklist_renders_in_chromium_flagged_first(engine: Engine, tmp_path: Path) -> None:
    seeded = seed_worklist(engine)
    with serve(engine) as base_url:
        url = base_url + "/"
        dom = _chromium(tmp_path, "--dump-dom", url)
        shot = tmp_path / "page.png"
        screenshot = _chromium(tmp_path, f"--screenshot={shot}", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert DISCLAIMER in html
    rows = [html.index(f'data-study="{uid}"') for uid in seeded.order]
    assert rows == sorted(rows), "the browser shows the studies in worklist order"
    first_row = html[rows[0] : rows[1]]
    assert "LIKELY POSITIVE" in first_row
    assert seeded.failed_reason in html
    assert seeded.not_eligible_reason in html

    assert screenshot.returncode == 0, screenshot.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == WINDOW
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "the screenshot is blank"
