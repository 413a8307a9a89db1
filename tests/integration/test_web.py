"""The web worklist over HTTP: a real uvicorn server in a thread, real Postgres, httpx."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine

from cxr_triage.worklist_view import DISCLAIMER
from tests.conftest import REPO, Services
from tests.web_server import Seeded, seed_worklist, serve
from worklist.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed_worklist(engine)


@pytest.fixture
def client(engine: Engine, seeded: Seeded) -> Iterator[httpx.Client]:
    with serve(engine) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def test_api_worklist_is_in_worklist_order_flagged_first(
    client: httpx.Client, seeded: Seeded
) -> None:
    resp = client.get("/api/worklist")
    assert resp.status_code == 200
    body = resp.json()
    assert [e["study_instance_uid"] for e in body] == list(seeded.order)
    assert [e["flagged"] for e in body] == [True, True, False, False, False, False]
    assert body[0]["score"] == pytest.approx(0.912)
    assert body[0]["heatmap_sop_instance_uids"] == [seeded.flagged_top_sop]
    limited = client.get("/api/worklist", params={"limit": 2}).json()
    assert [e["study_instance_uid"] for e in limited] == list(seeded.order[:2])


@pytest.mark.parametrize("limit", ["0", "5001", "-1", "many"])
def test_api_worklist_rejects_a_bad_limit(client: httpx.Client, limit: str) -> None:
    resp = client.get("/api/worklist", params={"limit": limit})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "limit"]


def test_worklist_page_shows_order_disclaimer_and_reasons(
    client: httpx.Client, seeded: Seeded
) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert DISCLAIMER in page
    assert seeded.failed_reason in page
    assert seeded.not_eligible_reason in page
    assert '<meta http-equiv="refresh" content="15">' in page
    positions = [page.index(f'data-study="{uid}"') for uid in seeded.order]
    assert positions == sorted(positions)
    assert page.count("LIKELY POSITIVE") == 2
    assert f'href="/studies/{seeded.flagged_top}"' in page
    assert "0.912" in page
    assert "<script" not in page
    assert "http://" not in page  # no external assets
    assert "https://" not in page


def test_study_page_shows_heatmap_and_the_png_is_served(
    client: httpx.Client, seeded: Seeded
) -> None:
    resp = client.get(f"/studies/{seeded.flagged_top}")
    assert resp.status_code == 200
    page = resp.text
    assert DISCLAIMER in page
    assert f'<img src="/heatmaps/{seeded.flagged_top_sop}.png"' in page
    for fact in ("0.912", "0.420", "2026.11-cal1", "LIKELY POSITIVE"):
        assert fact in page
    png = client.get(f"/heatmaps/{seeded.flagged_top_sop}.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_failed_study_page_shows_reason_without_heatmap(
    client: httpx.Client, seeded: Seeded
) -> None:
    page = client.get(f"/studies/{seeded.order[2]}").text
    assert seeded.failed_reason in page
    assert "<img" not in page


def test_unknown_study_and_heatmap_are_404_with_a_message(client: httpx.Client) -> None:
    resp = client.get("/studies/1.2.3.999")
    assert resp.status_code == 404
    assert "No study with Study Instance UID 1.2.3.999" in resp.text
    assert DISCLAIMER in resp.text
    png = client.get("/heatmaps/1.2.3.999.1.png")
    assert png.status_code == 404
    assert "no heatmap" in png.json()["detail"]


@pytest.mark.parametrize("uid", ["abc", "1.2.3;DROP", "1" * 65, "1.2.<b>x"])
def test_malformed_uids_are_400_with_a_message(client: httpx.Client, uid: str) -> None:
    resp = client.get(f"/studies/{uid}")
    assert resp.status_code == 400
    assert "Malformed Study Instance UID" in resp.text
    assert "<b>" not in resp.text
    png = client.get(f"/heatmaps/{uid}.png")
    assert png.status_code == 400
    assert "malformed SOP Instance UID" in png.json()["detail"]


def test_healthz_ok(client: httpx.Client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert resp.headers["x-content-type-options"] == "nosniff"


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


def test_run_web_serves_until_sigterm_then_exits_0(services: Services, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = services.env() | {"CXR_WEB_HOST": "127.0.0.1", "CXR_WEB_PORT": str(port)}
    code = (
        "import sys; from cxr_common.settings import WebSettings; "
        "from worklist.server import run_web; sys.exit(run_web(WebSettings()))"
    )
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "web worklist did not start"
                time.sleep(0.1)
        assert resp.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
