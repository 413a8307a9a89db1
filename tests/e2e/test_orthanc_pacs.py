"""A real PACS around cxr-triage: Orthanc (Debian's, with its DICOMweb plugin; own ports,
folders and configuration) plays the hospital's PACS.

DCMTK storescu sends a study from "the modality" to Orthanc; Orthanc's routing (a Lua
``OnStoredInstance`` doing ``SendToModality``, for what the modality sent) forwards it to
cxr-triage's listener; ``cxr-triage up`` (listener, scheduler, worker, results sender)
scores it and sends its result objects back twice: by C-STORE to Orthanc's DICOM port and
by STOW-RS to Orthanc's ``/dicom-web/`` (HTTP basic auth). The test then finds them in the
same study through Orthanc's QIDO-RS, and checks that they are exactly the objects the
results sender recorded as sent to each destination (whatever set it is configured to
send)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from tests.conftest import SAMPLES, StartUp
from tests.integration.results_peers import run_tool
from tests.orthanc import PASSWORD, USER, Orthanc, running_orthanc
from tests.peers import requires_peer
from tests.support import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_peer("dcmtk", "orthanc")]

QUIET_S = 3
MODALITY = "MODALITY1"
#: The hospital's routing rule: what the modality stores is forwarded to cxr-triage (not
#: what cxr-triage sends back, nor anything stored over REST/DICOMweb).
ROUTING = f"""
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == '{MODALITY}' then
    SendToModality(instanceId, 'CXR')
  end
end
"""


def _worklist(env: dict[str, str]) -> list[dict[str, Any]]:
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


def _sent(env: dict[str, str]) -> dict[str, Any] | None:
    entries = _worklist(env)
    if len(entries) != 1:
        return None
    results = entries[0]["results"]
    return results if results and results["state"] == "results_sent" else None


def _qido(pacs: Orthanc, study: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every instance of ``study`` in Orthanc."""
    found = pacs.get(f"/dicom-web/studies/{study}/instances")
    return {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in found}


#: Series Instance UID, Modality, Series Description, Number of Series Related Instances.
SERIES_TAGS = ("0020000E", "00080060", "0008103E", "00201209")


def _value(item: dict[str, Any], tag: str) -> object:
    return (item.get(tag, {}).get("Value") or [None])[0]


def _objects_of(destination: dict[str, Any]) -> set[str]:
    """The SOP Instance UIDs the results sender recorded for one destination."""
    return {v for k, v in destination.items() if k.endswith("_sop_instance_uid") and v}


def test_orthanc_routes_a_study_to_cxr_triage_and_gets_results_by_c_store_and_stow(
    start_up: StartUp, tmp_path: Path
) -> None:
    source = SAMPLES / "nih-nofinding-1.dcm"
    header = pydicom.dcmread(source, stop_before_pixels=True)
    study = str(header.StudyInstanceUID)
    with running_orthanc(tmp_path / "orthanc", lua=ROUTING) as pacs:
        dicom_port = free_port()  # chosen once Orthanc listens: never one of its ports
        pacs.add_modality("CXR", "CXR_TRIAGE", "127.0.0.1", dicom_port)
        up = start_up(
            "--no-web",
            CXR_DICOM_PORT=str(dicom_port),
            CXR_RESULT_DESTINATIONS=f"{pacs.destination},{pacs.dicomweb}",
            CXR_RESULT_DICOMWEB_USERNAME=USER,
            CXR_RESULT_DICOMWEB_PASSWORD=PASSWORD,
            CXR_STUDY_QUIET_S=str(QUIET_S),
            CXR_COMPLETENESS_INTERVAL_S="0.5",
        )
        env = up.env
        try:
            wait_until(
                lambda: (
                    run_tool(
                        ["echoscu", "-aec", "CXR_TRIAGE", "127.0.0.1", str(dicom_port)]
                    ).returncode
                    == 0
                ),
                120,
                "cxr-triage answering C-ECHO",
                alive=up.alive,
                interval=0.5,
            )
            # the modality stores into the PACS, never into cxr-triage directly
            sent = run_tool(
                ["storescu", "-aet", MODALITY, "-aec", pacs.ae_title, "127.0.0.1"]
                + [str(pacs.dicom_port), str(source)]
            )
            assert sent.returncode == 0, sent.stderr
            results = wait_until(
                lambda: _sent(env),
                300,
                lambda: f"results_sent recorded\n{up.tail()}\n{pacs.tail()}",
                alive=up.alive,
                interval=1.0,
            )
            in_pacs = _qido(pacs, study)
            series = pacs.get(f"/dicom-web/studies/{study}/series")
        finally:
            code = up.stop()
        assert code == 0, up.tail()

    entries = {d["destination"]: d for d in results["destinations"]}
    assert set(entries) == {pacs.destination, pacs.dicomweb}
    for entry in entries.values():
        assert entry["status"] == "sent", entry
        assert {v for k, v in entry.items() if k.endswith("_status") and k != "status"} <= {
            "0x0000",
            None,
        }
    objects = _objects_of(entries[pacs.destination])
    assert objects  # at least the SR
    assert _objects_of(entries[pacs.dicomweb]) == objects  # the same objects both ways
    original = str(header.SOPInstanceUID)
    assert set(in_pacs) == {original} | objects  # same study, nothing else, nothing missing
    assert Comprehensive3DSRStorage in {in_pacs[uid] for uid in objects}
    # what Orthanc shows for the study, by QIDO-RS (for the record: pytest -s)
    for found in series:
        print("QIDO series", *(_value(found, tag) for tag in SERIES_TAGS))
