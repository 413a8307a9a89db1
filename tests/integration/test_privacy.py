"""No patient-identifying data in logs, heatmap PNGs or stored file names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, text

from cxr_triage.send import send_paths
from tests.conftest import Services
from tests.dicom_factory import make_dataset, write
from tests.integration.conftest import wait_until_final
from tests.support import UpProcess

pytestmark = pytest.mark.integration

NAME = "DOE^JANE^Q"
MRN = "MRN-8675309"


def test_patient_data_never_reaches_logs_pngs_or_paths(
    services: Services,
    engine: Engine,
    listener: int,
    start_worker: Callable[..., object],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = make_dataset(accession="PRIV0001")
    ds.PatientName = NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = "19700101"
    path = write(ds, tmp_path / "private.dcm")
    caplog.set_level(logging.DEBUG)
    assert send_paths([path], "127.0.0.1", listener, progress=False).sent == 1
    worker_log = tmp_path / "worker.log"
    start_worker(batch_size=1, wait_ms=0, log=worker_log)
    assert wait_until_final(engine, 1) == {ds.SOPInstanceUID: "done"}

    texts = {"listener log": caplog.text, "worker log": worker_log.read_text(errors="replace")}
    assert ds.SOPInstanceUID in texts["listener log"]  # the logs do say which instance
    for where, content in texts.items():
        for secret in ("DOE", "JANE", MRN, "19700101"):
            assert secret not in content, f"{secret!r} found in {where}"
    with engine.begin() as conn:
        png = conn.execute(text("SELECT heatmap_png FROM predictions")).scalar_one()
        uri = conn.execute(text("SELECT storage_uri FROM instances")).scalar_one()
    for secret in (b"DOE", b"JANE", MRN.encode(), b"19700101"):
        assert secret not in png
    assert "DOE" not in uri
    assert MRN not in uri
    stored = list((services.data_dir / "instances").rglob("*.dcm"))
    assert stored
    assert all("DOE" not in str(p) and MRN not in str(p) for p in stored)


#: Canary values: distinctive enough that any occurrence in a log is a leak.
CANARY = {
    "PatientName": "ZQXCANARY^WIBBLEFROTH",
    "PatientID": "CANARY-ID-7781",
    "IssuerOfPatientID": "ZQXISSUER",
    "PatientBirthDate": "1970-01-01",  # malformed DA: pydicom would quote it in a warning
    "AccessionNumber": "ACCZQX991",
    "ReferringPhysicianName": "ZQXREFERRER^DOC",
    "InstitutionName": "ZQXINSTITUTE",
    "StudyDescription": "ZQXFREETEXT study of ZQXCANARY",
    "SeriesDescription": "ZQXFREETEXT chest for WIBBLEFROTH",
    "ProtocolName": "ZQXFREETEXT protocol",
    "ImageComments": "ZQXFREETEXT comment CANARY-ID-7781",
    "OperatorsName": "ZQXOPERATOR",
    # free text in a CS, lower case (invalid: pydicom would quote it in a warning when the
    # worker reads it): would reach the population reason and, unprotected, the worker log
    "ViewPosition": "zqxview",
}
CANARY_STRINGS = (
    "ZQXCANARY",
    "WIBBLEFROTH",
    "CANARY-ID-7781",
    "ZQXISSUER",
    "1970-01-01",
    "ACCZQX991",
    "ZQXREFERRER",
    "ZQXINSTITUTE",
    "ZQXFREETEXT",
    "ZQXOPERATOR",
    "ZQXVIEW",
)


@pytest.mark.slow
def test_a_canary_never_reaches_the_logs_of_any_process(
    services: Services, engine: Engine, start_up: Callable[..., UpProcess], tmp_path: Path
) -> None:
    """Issue 20: a canary (name, ID, issuer, a malformed birth date, accession, free text in
    several tags, free text in ViewPosition) through every process of ``cxr-triage up``:
    listener, scheduler, worker, results sender (SC + SR to a PACS), web (the study page).
    Their stdout and stderr, at DEBUG, never show any of it; the results and the page do
    carry the patient (they must)."""
    import httpx

    from cxr_db.accounts.tables import Role
    from tests.dicom_factory import corrupt_j2k
    from tests.integration.reading_rows import clean
    from tests.integration.results_peers import Received, start_scp
    from tests.support import wait_until
    from tests.web_server import add_user, sign_in

    clean(engine)
    add_user(engine, "rita", Role.RADIOLOGIST)
    scored = make_dataset(accession=CANARY["AccessionNumber"])
    for keyword, value in CANARY.items():
        setattr(scored, keyword, value)
    broken = make_dataset(accession=CANARY["AccessionNumber"])  # another study: not analysed
    for keyword, value in CANARY.items():
        setattr(broken, keyword, value)
    files = [write(scored, tmp_path / "scored.dcm")]
    files.append(corrupt_j2k(tmp_path / "broken.dcm", accession=CANARY["AccessionNumber"]))
    bad = pydicom.dcmread(files[1])
    for keyword, value in CANARY.items():
        setattr(bad, keyword, value)
    bad.save_as(files[1], enforce_file_format=True)
    received = Received()
    _, scp, pacs_port = start_scp(received)
    try:
        up = start_up(
            "--workers",
            "1",
            "--listener-processes",
            "1",
            CXR_DATABASE_URL=services.database_url,
            CXR_BROKER_URL=services.broker_url,
            CXR_QUEUE_NAME=services.queue_name,
            CXR_RESULTS_QUEUE_NAME=f"{services.queue_name}-results",
            CXR_RESULT_DESTINATIONS=f"TEST_PACS@127.0.0.1:{pacs_port}",
            CXR_STUDY_QUIET_S="1",
            CXR_COMPLETENESS_INTERVAL_S="0.5",
            CXR_LOG_LEVEL="DEBUG",
            CXR_BATCH_MAX_WAIT_MS="0",
        )
        try:
            wait_until(
                lambda: _sent(files, up.dicom_port),
                180,
                "the canary instances accepted by the listener",
                alive=up.alive,
                interval=1,
            )
            wait_until(
                lambda: len(received.datasets) >= 3,
                300,
                "SC + SR of the scored study and the not-analysed SR in the PACS",
                alive=up.alive,
                interval=0.5,
            )
            with httpx.Client(base_url=f"http://127.0.0.1:{up.web_port}", timeout=30) as http:
                wait_until(
                    lambda: _answers(http),
                    120,
                    "the web worklist answering",
                    alive=up.alive,
                    interval=0.5,
                )
                assert sign_in(http, "rita").status_code == 303
                page = http.get(f"/studies/{scored.StudyInstanceUID}")
                assert page.status_code == 200
                assert "ZQXCANARY" in page.text  # the page shows the patient: it must
                assert "view (non-standard value)" in page.text
        finally:
            code = up.stop()
        assert code == 0, up.tail()
    finally:
        scp.shutdown()  # type: ignore[attr-defined]

    # the results carry the patient (filed with the study), the reasons carry no free text
    assert all(str(ds.PatientID) == CANARY["PatientID"] for ds in received.datasets)
    with engine.begin() as conn:
        reasons = " ".join(
            r or ""
            for (r,) in conn.execute(
                text("SELECT coalesce(reason, population_reason) FROM instances")
            )
        )
    assert "could not be decoded" in reasons
    logs = up.log.read_text(errors="replace")
    for role_line in (
        f"stored sop_instance_uid={scored.SOPInstanceUID}",  # listener
        f"results of {scored.StudyInstanceUID} v1",  # results sender
        "failed: pixel data could not be decoded",  # worker
    ):
        assert role_line in logs, role_line
    for where, content in {"logs of every process": logs, "reasons": reasons}.items():
        for canary in CANARY_STRINGS:
            assert canary not in content.upper(), f"{canary!r} found in the {where}"


def _sent(files: list[Path], port: int) -> bool:
    try:
        return send_paths(files, "127.0.0.1", port, progress=False).sent == len(files)
    except Exception:  # noqa: BLE001 - the listener is not up yet
        return False


def _answers(http: object) -> bool:
    import httpx

    assert isinstance(http, httpx.Client)
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
