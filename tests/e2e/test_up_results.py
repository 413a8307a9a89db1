"""Done-when of results back to PACS: `cxr-triage up` with CXR_RESULT_DESTINATIONS pointing
at DCMTK storescp; a study sent with DCMTK storescu leaves an SC and an SR in storescp's
folder within the quiet period plus a few seconds of being scored; DCMTK reads them;
`cxr-triage worklist --json` shows them as sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from cxr_triage.embedded import free_port
from tests.conftest import SAMPLES
from tests.integration.results_peers import run_tool, running_storescp
from tests.peers import requires_peer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    requires_peer("dcmtk"),
]

QUIET_S = 3
#: What "a few seconds" may take on a loaded CI machine: completeness pass, results
#: process picking the job up, two C-STOREs.
SLACK_S = 30


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


def test_up_files_sc_and_sr_into_storescp(tmp_path: Path) -> None:
    source = SAMPLES / "nih-nofinding-1.dcm"
    header = pydicom.dcmread(source, stop_before_pixels=True)
    out = tmp_path / "pacs"
    with running_storescp(out, ae_title="PACS") as pacs:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
        env.update(
            CXR_DATA_DIR=str(tmp_path / "data"),
            CXR_DICOM_PORT=str(port),
            CXR_WEB_PORT=str(free_port()),
            CXR_RESULT_DESTINATIONS=str(pacs),
            CXR_STUDY_QUIET_S=str(QUIET_S),
            CXR_COMPLETENESS_INTERVAL_S="0.5",
        )
        log = open(tmp_path / "up.log", "wb")  # closed below
        up = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "up", "--no-web"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while (
                run_tool(["echoscu", "-aec", "CXR_TRIAGE", "127.0.0.1", str(port)]).returncode != 0
            ):
                assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "listener did not answer C-ECHO"
                time.sleep(0.5)
            sent = run_tool(
                ["storescu", "-aec", "CXR_TRIAGE", "-aet", "MODALITY1", "127.0.0.1", str(port)]
                + [str(source)]
            )
            assert sent.returncode == 0, sent.stderr
            deadline = time.monotonic() + 240
            while True:
                entries = _worklist(env)
                if entries and entries[0]["status"] == "done":
                    break
                assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
                assert time.monotonic() < deadline, entries
                time.sleep(0.5)
            scored_at = time.monotonic()
            while len(list(out.iterdir())) < 2:
                assert time.monotonic() - scored_at < QUIET_S + SLACK_S, (
                    tmp_path / "up.log"
                ).read_text()[-3000:]
                time.sleep(0.2)
            landed_s = time.monotonic() - scored_at
            deadline = time.monotonic() + 60
            while True:  # the send is recorded just after storescp answered
                (entry,) = _worklist(env)
                results = entry["results"]
                assert isinstance(results, dict)
                if results["state"] == "results_sent":
                    break
                assert time.monotonic() < deadline, results
                time.sleep(0.5)
        finally:
            up.send_signal(signal.SIGTERM)
            code = up.wait(timeout=120)
            log.close()
        assert code == 0, (tmp_path / "up.log").read_text()[-3000:]

    assert landed_s < QUIET_S + SLACK_S
    (destination,) = results["destinations"]
    assert destination["destination"] == str(pacs)
    assert (destination["status"], destination["sc_status"], destination["sr_status"]) == (
        "sent",
        "0x0000",
        "0x0000",
    )
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID: p for p in out.iterdir()}
    assert set(files) == {SecondaryCaptureImageStorage, ComprehensiveSRStorage}
    sr_dump = run_tool(["dsrdump", str(files[ComprehensiveSRStorage])])
    assert sr_dump.returncode == 0, sr_dump.stderr
    assert "E:" not in sr_dump.stderr, sr_dump.stderr
    # the NIH sample is an adult: outside the validated population, its score is a shadow score
    assert '"Shadow score, not used for triage")' in sr_dump.stdout
    assert "OUTSIDE" in sr_dump.stdout.upper()
    sc_dump = run_tool(
        [
            "dcmdump",
            "+P",
            "StudyInstanceUID",
            "+P",
            "PatientID",
            str(files[SecondaryCaptureImageStorage]),
        ]
    )
    assert sc_dump.returncode == 0, sc_dump.stderr
    assert f"[{header.StudyInstanceUID}]" in sc_dump.stdout
    assert f"[{header.PatientID}]" in sc_dump.stdout
