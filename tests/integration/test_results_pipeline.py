"""Results back to PACS through the real path: C-STORE to the listener → Postgres → scoring
worker → completeness job (quiet period 1 s) → results queue → ``cxr-triage send-results``
→ C-STORE to a real pynetdicom SCP and DCMTK storescp on loopback.

Also: a destination that is down gets the results once it is back (no duplicates), a late
instance produces a new result version that supersedes the first, and a destination that
is our own listener (a PACS forwarding everything back) causes no loop."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pydicom
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import Engine, text

from cxr_common.clinical import DISCLAIMER
from cxr_common.settings import ListenerSettings, SchedulerSettings
from cxr_db.instances import reads as instance_reads
from cxr_db.worklist import reads
from cxr_queue import ResultsJob, enqueue_results, make_celery
from cxr_results import Destination, is_our_uid
from cxr_triage.send import send_paths
from dicom_listener.server import ListenerHandle
from tests.conftest import SAMPLES, Services
from tests.dicom_factory import chest_like, kermany_pixels, make_dataset, write
from tests.integration.conftest import wait_until_final
from tests.integration.results_peers import (
    DCMTK,
    DICOM3TOOLS,
    Received,
    dciodvfy_errors,
    run_tool,
    running_storescp,
    start_scp,
)
from tests.results_helpers import sr_groups, sr_items, sr_value
from tests.support import free_port, running, wait_until
from worklist.present import entry_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUIET_S = 1.0


def _results_queue(services: Services) -> str:
    return f"{services.queue_name}-results"


@pytest.fixture
def results_listener(services: Services, engine: Engine) -> Iterator[ListenerHandle]:
    """The real listener, and the scheduler with a 1 s quiet period and its completeness
    job every 0.2 s."""
    from cxr_scheduler.service import start_scheduler
    from dicom_listener.server import start_listener

    client = redis.Redis.from_url(services.broker_url)
    client.delete(_results_queue(services))
    client.close()
    settings = ListenerSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        queue_name=services.queue_name,
        results_queue_name=_results_queue(services),
        data_dir=services.data_dir,
        storage_uri=(services.data_dir / "instances").as_uri(),
        dicom_host="127.0.0.1",
        dicom_port=0,
    )
    app = make_celery(services.broker_url)
    scheduler = start_scheduler(
        SchedulerSettings.model_validate(
            {**dict(settings), "study_quiet_s": QUIET_S, "completeness_interval_s": 0.2}
        ),
        engine,
        app,
    )
    handle = start_listener(settings, engine, app)
    yield handle
    handle.shutdown()
    scheduler.shutdown()


@pytest.fixture
def start_results_worker(
    services: Services, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """``cxr-triage send-results`` sending to ``destinations`` (retries 1, 2, 2, ... s)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []

    def _start(destinations: str) -> subprocess.Popen[bytes]:
        env = services.env("results")
        env.update(
            CXR_RESULTS_QUEUE_NAME=_results_queue(services),
            CXR_RESULT_DESTINATIONS=destinations,
            CXR_RESULT_CALLING_AE_TITLE="CXR_RESULTS",
            CXR_RESULT_RETRY_MAX_BACKOFF_S="2",
            CXR_RESULT_TIMEOUT_S="5",
        )
        log = open(tmp_path / f"results-{len(procs)}.log", "wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "send-results"], env=env, stdout=log, stderr=log
        )
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for log in logs:
        log.close()


def _results(engine: Engine) -> dict[str, dict[str, object]]:
    """study_instance_uid → the ``results`` field of ``worklist --json``."""
    out = {}
    for entry in reads.worklist(engine):
        results = entry_json(entry)["results"]
        assert isinstance(results, dict)
        out[entry.study_instance_uid] = results
    return out


def _wait_for(
    what: str, check: Callable[[], bool], procs: list[subprocess.Popen[bytes]], timeout_s: float
) -> None:
    wait_until(check, timeout_s, what, alive=running(procs))


def _wait_results_state(
    engine: Engine,
    studies: set[str],
    state: str,
    procs: list[subprocess.Popen[bytes]],
    version: int = 1,
    timeout_s: float = 180,
) -> dict[str, dict[str, object]]:
    def done() -> bool:
        got = _results(engine)
        return all(
            u in got and got[u]["state"] == state and got[u]["result_version"] == version
            for u in studies
        )

    _wait_for(f"{state} v{version}", done, procs, timeout_s)
    return _results(engine)


def _sends(engine: Engine) -> list[tuple[str, int, str, int]]:
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT destination, result_version, status, attempt FROM result_sends ORDER BY id"
            )
        ).all()
    return [(r.destination, r.result_version, r.status, r.attempt) for r in rows]


def _study_files(tmp_path: Path) -> tuple[list[Path], Dataset, Dataset, Dataset]:
    """A two-image chest study (made in code), a lateral chest film (a chest radiograph
    that is not eligible) and a CT study (not a chest radiograph at all)."""
    # real films: a synthetic one is outside by image (shadow) and sends no triage score
    a = make_dataset(kermany_pixels(1), accession="RES0001")
    b = make_dataset(kermany_pixels(2), study_uid=a.StudyInstanceUID, accession="RES0001")
    lateral = make_dataset(kermany_pixels(3), view="LL", accession="RES0002")
    files = [
        write(a, tmp_path / "a.dcm"),
        write(b, tmp_path / "b.dcm"),
        write(lateral, tmp_path / "lat.dcm"),
        SAMPLES / "ct-small.dcm",
    ]
    return files, a, lateral, pydicom.dcmread(SAMPLES / "ct-small.dcm", stop_before_pixels=True)


def _best_instance(engine: Engine, study: str) -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "SELECT i.sop_instance_uid FROM predictions p JOIN instances i "
                    "ON i.id = p.instance_id JOIN studies s ON s.id = i.study_id "
                    "WHERE s.study_instance_uid = :u ORDER BY p.probability DESC LIMIT 1"
                ),
                {"u": study},
            ).scalar_one()
        )


@DCMTK
@DICOM3TOOLS
def test_complete_studies_reach_a_pynetdicom_scp_and_dcmtk_storescp(
    services: Services,
    engine: Engine,
    results_listener: ListenerHandle,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    start_results_worker: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """The PACS takes every object (default), storescp only ``[sr+seg]``; the lateral
    chest film gets the not-analysed report, the CT nothing (the default)."""
    received = Received()
    _, scp, scp_port = start_scp(received)
    out = tmp_path / "storescp"
    try:
        with running_storescp(out) as storescp:
            pacs = Destination("TEST_PACS", "127.0.0.1", scp_port)
            procs = [
                start_worker(batch_size=2, wait_ms=200),
                start_results_worker(f"{pacs},{storescp}[sr+seg]"),
            ]
            files, chest, lateral, ct = _study_files(tmp_path)
            report = send_paths(files, "127.0.0.1", results_listener.port, progress=False)
            assert report.sent == 4
            studies = {str(chest.StudyInstanceUID), str(lateral.StudyInstanceUID)}
            results = _wait_results_state(engine, studies, "results_sent", procs)
            # A redelivered job (or a second listener's) sends nothing again.
            app = make_celery(services.broker_url)
            with engine.begin() as conn:
                study_id = conn.execute(
                    text("SELECT id FROM studies WHERE study_instance_uid = :u"),
                    {"u": chest.StudyInstanceUID},
                ).scalar_one()
            sends_before = _sends(engine)
            for _ in range(2):
                enqueue_results(
                    app,
                    ResultsJob(
                        study_id=study_id,
                        study_instance_uid=str(chest.StudyInstanceUID),
                        result_version=1,
                    ),
                    _results_queue(services),
                )
            client = redis.Redis.from_url(services.broker_url)
            _wait_for(
                "drained",
                lambda: (
                    client.llen(_results_queue(services)) == 0
                    and not any(
                        _results_queue(services).encode() in v for v in client.hvals("unacked")
                    )
                ),
                procs,
                60,
            )
            client.close()
            assert _sends(engine) == sends_before
            stored = sorted(out.iterdir())
    finally:
        scp.shutdown()  # type: ignore[attr-defined]

    # each destination got its objects for the scored study and one SR for the lateral one
    for destination in (str(pacs), str(storescp)):
        for uid in studies:
            (outcome,) = [
                d
                for d in results[uid]["destinations"]  # type: ignore[attr-defined]
                if d["destination"] == destination
            ]
            assert (outcome["status"], outcome["attempt"], outcome["sr_status"]) == (
                "sent",
                1,
                "0x0000",
            )
    # the CT study: not a chest radiograph, nothing sent, still complete
    ct_results = _results(engine)[str(ct.StudyInstanceUID)]
    assert (ct_results["state"], ct_results["destinations"]) == ("complete", [])
    assert len(received.datasets) == 4
    assert set(received.calling_ae_titles) == {"CXR_RESULTS"}
    by_class: dict[str, list[Dataset]] = {}
    for ds in received.datasets:
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    (sc,) = by_class[SecondaryCaptureImageStorage]
    (seg,) = by_class[SegmentationStorage]
    sr, not_analysed = sorted(
        by_class[Comprehensive3DSRStorage],
        key=lambda d: d.StudyInstanceUID != chest.StudyInstanceUID,
    )
    best = _best_instance(engine, str(chest.StudyInstanceUID))
    assert (sc.StudyInstanceUID, sc.PatientID) == (chest.StudyInstanceUID, chest.PatientID)
    assert sc.AccessionNumber == "RES0001"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SeriesDescription.startswith("cxr-triage heatmap")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == best
    assert sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID == best
    assert sc.Columns == chest.Columns  # the radiograph's resolution, not the 512 px overlay
    assert is_our_uid(sc.SOPInstanceUID, (services.data_dir / "uid-root").read_text().strip())
    assert (seg.StudyInstanceUID, seg.Rows, seg.Columns) == (
        chest.StudyInstanceUID,
        chest.Rows,
        chest.Columns,
    )
    derived = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == best
    groups = sr_groups(sr)
    assert len(groups) == 2  # one per scored image, the best first
    items = groups[0]
    assert sr_value(items["Comment"]) == DISCLAIMER
    assert sr_value(items["Source of Measurement"])[1] == best  # type: ignore[index]
    assert sr_value(items["Best illustration of finding"])[1] == sc.SOPInstanceUID  # type: ignore[index]
    assert sr_value(items["Heatmap (fractional segmentation)"])[1] == seg.SOPInstanceUID  # type: ignore[index]
    assert 0.0 <= float(sr_value(items["Triage score"])) <= 1.0  # type: ignore[arg-type]
    parameters = [
        str(i.TextValue)
        for i in items["Measurement Group"].ContentSequence
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert any(p.startswith("calibration ") for p in parameters)
    assert any(len(p) == len("weights sha256 ") + 64 for p in parameters)
    sources = [str(sr_value(g["Source of Measurement"])[1]) for g in groups]  # type: ignore[index]
    assert sources[0] == best
    assert len(set(sources)) == 2
    assert not_analysed.StudyInstanceUID == lateral.StudyInstanceUID
    assert not_analysed.PatientID == lateral.PatientID
    ni = sr_items(not_analysed)
    assert sr_value(ni["Analysis status"]) == ("NOT_ELIGIBLE", "99CXR")
    assert "lateral" in str(sr_value(ni["Reason not analysed"]))

    # what storescp stored ([sr+seg]): no SC; dciodvfy finds no error, dsrdump parses
    # the SRs, and the SR references only what that destination got
    assert len(stored) == 3
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in stored}
    assert SecondaryCaptureImageStorage not in {str(h.SOPClassUID) for h in headers.values()}
    for path, ds in headers.items():
        assert dciodvfy_errors(path) == [], path.name
        if ds.SOPClassUID == Comprehensive3DSRStorage:
            dump = run_tool(["dsrdump", str(path)])
            assert dump.returncode == 0, dump.stderr
            assert "E:" not in dump.stderr, dump.stderr
            assert "Imaging Measurement Report" in dump.stdout
            if ds.StudyInstanceUID == chest.StudyInstanceUID:
                assert "Best illustration of finding" not in dump.stdout
                assert "Heatmap (fractional segmentation)" in dump.stdout
        else:
            assert ds.SOPClassUID == SegmentationStorage
            dump = run_tool(["dcmdump", "+P", "StudyInstanceUID", "+P", "PatientID", str(path)])
            assert dump.returncode == 0, dump.stderr
            assert f"[{chest.StudyInstanceUID}]" in dump.stdout
            assert f"[{chest.PatientID}]" in dump.stdout


def test_a_destination_that_is_down_gets_the_results_when_it_is_back(
    engine: Engine,
    results_listener: ListenerHandle,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    start_results_worker: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    down = Destination("TEST_PACS", "127.0.0.1", port)
    procs = [start_worker(batch_size=2, wait_ms=200), start_results_worker(str(down))]
    chest = make_dataset(chest_like(seed=3), accession="DOWN0001")
    send_paths(
        [write(chest, tmp_path / "c.dcm")], "127.0.0.1", results_listener.port, progress=False
    )
    _wait_for(
        "three failed attempts",
        lambda: sum(s[2] == "failed" for s in _sends(engine)) >= 3,
        procs,
        180,
    )
    (entry,) = _results(engine).values()
    assert entry["state"] == "complete"  # still trying
    last = entry["destinations"][0]  # type: ignore[index]
    assert last["status"] == "failed"
    assert "no answer" in last["error"]

    received = Received()
    _, scp, _ = start_scp(received, port=port)  # the PACS is back
    try:
        _wait_results_state(engine, {str(chest.StudyInstanceUID)}, "results_sent", procs, 1, 60)
    finally:
        scp.shutdown()  # type: ignore[attr-defined]
    uids = received.sop_instance_uids()
    assert len(uids) == len(set(uids))  # each object once
    classes = {str(ds.SOPClassUID) for ds in received.datasets}
    assert {SecondaryCaptureImageStorage, Comprehensive3DSRStorage} <= classes
    sends = _sends(engine)
    assert [s[2] for s in sends].count("sent") == 1
    assert sends[-1][2] == "sent"
    assert [s[3] for s in sends] == list(range(1, len(sends) + 1))  # every attempt stored


def test_a_late_instance_supersedes_the_first_result(
    engine: Engine,
    results_listener: ListenerHandle,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    start_results_worker: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    received = Received()
    _, scp, port = start_scp(received)
    try:
        procs = [
            start_worker(batch_size=2, wait_ms=200),
            start_results_worker(f"TEST_PACS@127.0.0.1:{port}"),
        ]
        first = make_dataset(kermany_pixels(4), accession="LATE0001")
        send_paths(
            [write(first, tmp_path / "1.dcm")], "127.0.0.1", results_listener.port, progress=False
        )
        study = str(first.StudyInstanceUID)
        _wait_results_state(engine, {study}, "results_sent", procs, 1)
        (entry_v1,) = reads.worklist(engine)
        late = make_dataset(kermany_pixels(5), study_uid=study, accession="LATE0001")
        send_paths(
            [write(late, tmp_path / "2.dcm")], "127.0.0.1", results_listener.port, progress=False
        )
        _wait_results_state(engine, {study}, "results_sent", procs, 2)
    finally:
        scp.shutdown()  # type: ignore[attr-defined]
    (entry_v2,) = reads.worklist(engine)
    assert entry_v2.score is not None
    assert entry_v1.score is not None
    assert entry_v2.score >= entry_v1.score  # priority never goes down
    assert entry_v2.flagged >= entry_v1.flagged
    assert len(received.datasets) == 6
    by_class: dict[str, list[Dataset]] = {}
    for ds in received.datasets:  # in the order sent: version 1 first
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    sc1, sc2 = by_class[SecondaryCaptureImageStorage]
    sr1, sr2 = by_class[Comprehensive3DSRStorage]
    seg1, seg2 = by_class[SegmentationStorage]
    assert sc2.SeriesInstanceUID == sc1.SeriesInstanceUID
    assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert seg2.SeriesInstanceUID == seg1.SeriesInstanceUID
    assert (sc1.InstanceNumber, sc2.InstanceNumber, sr2.InstanceNumber) == (1, 2, 2)
    assert (seg1.InstanceNumber, seg2.InstanceNumber) == (1, 2)
    assert sc2.SOPInstanceUID != sc1.SOPInstanceUID
    assert seg2.SOPInstanceUID != seg1.SOPInstanceUID
    predecessor = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr1.SOPInstanceUID


def test_our_own_listener_as_destination_causes_no_loop(
    engine: Engine,
    results_listener: ListenerHandle,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    start_results_worker: Callable[[str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """A PACS forwarding everything back: our SC and SR reach our listener, which answers
    Success and records nothing; nothing is scored again, the study is not reopened."""
    procs = [
        start_worker(batch_size=2, wait_ms=200),
        start_results_worker(f"CXR_TRIAGE@127.0.0.1:{results_listener.port}"),
    ]
    chest = make_dataset(chest_like(seed=6), accession="LOOP0001")
    send_paths(
        [write(chest, tmp_path / "c.dcm")], "127.0.0.1", results_listener.port, progress=False
    )
    wait_until_final(engine, 1, procs=procs[:1])
    results = _wait_results_state(engine, {str(chest.StudyInstanceUID)}, "results_sent", procs)
    (outcome,) = results[str(chest.StudyInstanceUID)]["destinations"]  # type: ignore[misc]
    assert (outcome["sc_status"], outcome["sr_status"]) == ("0x0000", "0x0000")
    # both C-STOREs were answered (and anything they would record committed) before the
    # send was recorded: the listener holds the original instance only
    with engine.begin() as conn:
        counts = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM instances) AS instances, "
                "(SELECT count(*) FROM studies) AS studies, "
                "(SELECT count(*) FROM predictions) AS predictions, "
                "(SELECT max(result_version) FROM studies) AS version"
            )
        ).one()
    assert tuple(counts) == (1, 1, 1, 1)
    assert instance_reads.instance_statuses(engine) == {str(chest.SOPInstanceUID): "done"}


def test_objects_with_our_marker_but_new_uids_are_refused_never_silently_acknowledged(
    services: Services, engine: Engine, results_listener: ListenerHandle
) -> None:
    """A PACS that re-assigns UIDs on import (or anyone writing our Manufacturer +
    SeriesDescription marker): the marker proves nothing, so the image is refused with a
    status (0xC231), never acknowledged and dropped; an SR that is not ours by UID root is
    refused as any class we do not store. Nothing is recorded either way."""
    from pydicom.uid import generate_uid

    from cxr_results import (
        build_secondary_capture,
        build_structured_report,
        result_uids,
        send_objects,
    )
    from tests.results_helpers import UID_ROOT, overlay, summary

    source = make_dataset(chest_like(seed=7))
    uids = result_uids(UID_ROOT, str(source.StudyInstanceUID), 1)  # not the listener's root
    sc = build_secondary_capture(source, overlay(source), summary(), uids)
    sr = build_structured_report(source, summary(), uids, sc)
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sc.SeriesInstanceUID = generate_uid()
    foreign = build_structured_report(source, summary(), uids, sc)
    foreign.SOPInstanceUID = foreign.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    foreign.SeriesInstanceUID = generate_uid()
    foreign.Manufacturer = "Another Vendor"
    foreign.SeriesDescription = "radiologist report"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = generate_uid()
    listener = Destination("CXR_TRIAGE", "127.0.0.1", results_listener.port)
    outcomes = send_objects(listener, [sc, sr, foreign])
    assert [(o.stored, o.status) for o in outcomes] == [
        (False, 0xC231),
        (False, 0x0122),
        (False, 0x0122),
    ]
    assert instance_reads.instance_statuses(engine) == {}
    assert not (services.data_dir / "instances" / str(source.StudyInstanceUID)).exists()
