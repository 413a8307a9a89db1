"""`cxr-triage up` receives studies from DCMTK's storescu (an independent DICOM
implementation); `cxr-triage worklist --json` in another process shows them scored; the
web API answers a token made with `cxr-triage token create` (and nothing without one);
SIGTERM stops everything cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cxr_triage.embedded import free_port
from tests.conftest import SAMPLES
from tests.peers import requires_peer

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


def test_storescu_to_up_then_worklist_shows_scored_studies(tmp_path: Path) -> None:
    port = free_port()
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(tmp_path / "data"), CXR_DICOM_PORT=str(port), CXR_WEB_PORT=str(web_port)
    )
    log = open(tmp_path / "up.log", "wb")  # closed below
    up = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while (
            subprocess.run(
                ["echoscu", "-aec", "CXR_TRIAGE", "127.0.0.1", str(port)],
                capture_output=True,
                check=False,
            ).returncode
            != 0
        ):
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "listener did not answer C-ECHO"
            time.sleep(0.5)
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
        deadline = time.monotonic() + 240
        while True:
            entries = _worklist(env)
            if len(entries) == len(files) and all(e["status"] == "done" for e in entries):
                break
            assert time.monotonic() < deadline, entries
            time.sleep(1)
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
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not (tmp_path / "data" / "embedded" / "services.json").exists()
