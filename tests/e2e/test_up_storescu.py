"""`cxr-triage up` receives studies from DCMTK's storescu (an independent DICOM
implementation); `cxr-triage worklist --json` in another process shows them scored; the
web API answers a token made with `cxr-triage token create` (and nothing without one);
SIGTERM stops everything cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.conftest import SAMPLES, StartUp
from tests.peers import requires_peer
from tests.support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    requires_peer("dcmtk"),
]


def _worklist(env: dict[str, str]) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "worklist", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(out.stdout)
    assert isinstance(data, list)
    return data


def _echo(port: int) -> int:
    return subprocess.run(
        ["echoscu", "-aec", "CXR_TRIAGE", "127.0.0.1", str(port)], capture_output=True, check=False
    ).returncode


def _all_done(entries: list[dict[str, object]], expected: int) -> list[dict[str, object]] | None:
    done = len(entries) == expected and all(e["status"] == "done" for e in entries)
    return entries if done else None


def test_storescu_to_up_then_worklist_shows_scored_studies(start_up: StartUp) -> None:
    up = start_up()
    port, web_port, env = up.dicom_port, up.web_port, up.env
    try:
        wait_until(lambda: _echo(port) == 0, 120, "C-ECHO answered", alive=up.alive, interval=0.5)
        files = [SAMPLES / "nih-nofinding-1.dcm", *sorted((SAMPLES / "derived").glob("*.dcm"))]
        sent = subprocess.run(
            [
                "storescu",
                "-aec",
                "CXR_TRIAGE",
                "-aet",
                "MODALITY1",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        entries = wait_until(
            lambda: _all_done(_worklist(env), len(files)),
            240,
            "every study scored",
            alive=up.alive,
            interval=1,
        )
        # in the validated population a score ranks the study; outside it (the NIH adult) the
        # score is kept as a shadow score that never ranks it
        for e in entries:
            if e["population"] == "outside":
                assert e["score"] is None, e
                assert isinstance(e["shadow_score"], float), e
            else:
                assert isinstance(e["score"], float), e
        assert any(e["population"] == "outside" for e in entries)
        flags = [e["flagged"] for e in entries]
        assert flags == sorted(flags, reverse=True)
        assert all(e["model_version"] for e in entries)
        # the web worklist that `up` started serves the same list, to a token made at the CLI
        url = f"http://127.0.0.1:{web_port}/api/worklist"
        assert httpx.get(url, timeout=30).status_code == 401  # nothing without credentials
        made = subprocess.run(
            [sys.executable, "-m", "cxr_triage", "token", "create", "e2e", "--role", "radiologist"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        token = made.stdout.strip()
        api = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert api.status_code == 200
        assert [e["study_instance_uid"] for e in api.json()] == [
            e["study_instance_uid"] for e in entries
        ]
    finally:
        code = up.stop()
    assert code == 0, up.tail()
    assert not (up.data_dir / "embedded" / "services.json").exists()
