"""STOW-RS in, end to end: ``cxr-triage up`` (its own web process, embedded Postgres and
Redis), a sender token made with the CLI, and PyPI's dicomweb-client storing a study into
``/dicomweb/studies``; the web process enqueues the scoring job through the ingest core,
so the study ends up scored on the worklist as if it had come by C-STORE."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.conftest import SAMPLES, StartUp
from tests.support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cxr_triage", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def _worklist(env: dict[str, str]) -> list[dict[str, Any]]:
    data = json.loads(_cli(env, "worklist", "--json"))
    assert isinstance(data, list)
    return data


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_dicomweb_client_stores_into_up_and_the_study_is_scored(start_up: StartUp) -> None:
    source = pydicom.dcmread(SAMPLES / "nih-nofinding-1.dcm")
    up = start_up("--workers", "1")
    url = f"http://127.0.0.1:{up.web_port}"
    try:
        wait_until(lambda: _healthy(url), 180, "the web answering", alive=up.alive, interval=0.5)
        token = _cli(up.env, "token", "create", "modality-gw", "--role", "sender").strip()
        client = DICOMwebClient(url=f"{url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
        answer = client.store_instances([source], study_instance_uid=source.StudyInstanceUID)
        (item,) = answer.ReferencedSOPSequence
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        entries = wait_until(
            lambda: (e := _worklist(up.env)) and e[0]["status"] == "done" and e,
            240,
            lambda: f"the study scored\n{up.tail()}",
            alive=up.alive,
            interval=1.0,
        )
        (entry,) = entries
        assert entry["study_instance_uid"] == source.StudyInstanceUID
        # the sender reads nothing
        assert (
            httpx.get(f"{url}/api/worklist", headers={"Authorization": f"Bearer {token}"})
        ).status_code == 403
    finally:
        code = up.stop()
    assert code == 0, up.tail()
