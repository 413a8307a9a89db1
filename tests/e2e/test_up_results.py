"""Done-when of results back to PACS: `cxr-triage up` with CXR_RESULT_DESTINATIONS pointing
at DCMTK storescp; a study sent with DCMTK storescu leaves an SC, a heatmap SEG and a TID
1500 SR in storescp's folder once it is scored and quiet; DCMTK reads them and dciodvfy
finds no error; `cxr-triage worklist --json` shows them as sent. (How soon after the quiet
period they land is measured in bench/, not here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from tests.conftest import SAMPLES, StartUp
from tests.integration.results_peers import run_tool, running_storescp
from tests.peers import requires_peer
from tests.support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    requires_peer("dcmtk", "dicom3tools"),
]

QUIET_S = 3


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


def _results_when(entries: list[dict[str, object]], state: str) -> dict[str, object] | None:
    (entry,) = entries
    results = entry["results"]
    assert isinstance(results, dict)
    return results if results["state"] == state else None


def test_up_files_sc_and_sr_into_storescp(start_up: StartUp, tmp_path: Path) -> None:
    source = SAMPLES / "nih-nofinding-1.dcm"
    header = pydicom.dcmread(source, stop_before_pixels=True)
    out = tmp_path / "pacs"
    with running_storescp(out, ae_title="PACS") as pacs:
        up = start_up(
            "--no-web",
            CXR_RESULT_DESTINATIONS=str(pacs),
            CXR_STUDY_QUIET_S=str(QUIET_S),
            CXR_COMPLETENESS_INTERVAL_S="0.5",
        )
        port, env = up.dicom_port, up.env
        try:
            wait_until(
                lambda: (
                    run_tool(["echoscu", "-aec", "CXR_TRIAGE", "127.0.0.1", str(port)]).returncode
                    == 0
                ),
                120,
                "C-ECHO answered",
                alive=up.alive,
                interval=0.5,
            )
            sent = run_tool(
                ["storescu", "-aec", "CXR_TRIAGE", "-aet", "MODALITY1", "127.0.0.1", str(port)]
                + [str(source)]
            )
            assert sent.returncode == 0, sent.stderr
            wait_until(
                lambda: (entries := _worklist(env)) and entries[0]["status"] == "done",
                240,
                "the study scored",
                alive=up.alive,
                interval=0.5,
            )
            # the three objects land once the study has been quiet for QUIET_S
            wait_until(
                lambda: len(list(out.iterdir())) >= 3,
                120,
                "the SC, the heatmap SEG and the SR in storescp's folder",
                alive=up.alive,
                interval=0.2,
            )
            # the send is recorded just after storescp answered
            results = wait_until(
                lambda: _results_when(_worklist(env), "results_sent"),
                60,
                "results_sent recorded",
                interval=0.5,
            )
        finally:
            code = up.stop()
        assert code == 0, up.tail()

    (destination,) = results["destinations"]
    assert destination["destination"] == str(pacs)
    assert (destination["status"], destination["sc_status"], destination["sr_status"]) == (
        "sent",
        "0x0000",
        "0x0000",
    )
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID: p for p in out.iterdir()}
    assert set(files) == {
        SecondaryCaptureImageStorage,
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }
    sr_dump = run_tool(["dsrdump", str(files[Comprehensive3DSRStorage])])
    assert sr_dump.returncode == 0, sr_dump.stderr
    assert "E:" not in sr_dump.stderr, sr_dump.stderr
    # the NIH sample is an adult: outside the validated population, its score is a shadow score
    assert '"Shadow score, not used for triage")' in sr_dump.stdout
    assert "OUTSIDE" in sr_dump.stdout.upper()
    assert "Imaging Measurement Report" in sr_dump.stdout
    for path in files.values():
        verified = run_tool(["dciodvfy", str(path)])
        errors = [
            line for line in (verified.stdout + verified.stderr).splitlines() if "Error" in line
        ]
        assert errors == [], path.name
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
