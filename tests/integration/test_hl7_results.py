"""HL7 results to the RIS through the real path: rows written by the repository functions
(as the listener and the worker write them, with the DICOM files on disk), the studies
completed by the real completeness query, results jobs on Redis, a real ``cxr-triage
send-results`` process, and independent MLLP receivers built on the ``hl7`` library
(``tests/hl7_receiver.py``): one that accepts everything, one that answers AE once per
message, one that drops the connection once per message; then a receiver that rejects
(AR), one that answers garbage, one that never answers and a port nobody listens on.

Checked: every message parses; exactly one accepted message per (study, version,
receiver) whatever the receiver did first; every attempt stored with its ACK code and
reason; a retry carries the same message control id; a new result version is sent again
as a correction; a study without an accession number is identified by its Study Instance
UID; studies not analysed say why; a CT study gets nothing; the study's result state and
the worklist JSON account for HL7; no patient data in the sender's log."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import hl7
import pytest
import redis
from pydicom.dataset import Dataset
from sqlalchemy import Engine, text

from cxr_common.clinical import DISCLAIMER
from cxr_db.instances import writes as repo
from cxr_db.results import store as results_db
from cxr_db.worklist import reads
from cxr_queue import ResultsJob, enqueue_results, make_celery
from tests.conftest import Services
from tests.db_rows import prediction
from tests.dicom_factory import make_dataset, write
from tests.hl7_receiver import AE_REASON, AR_REASON, Hl7Receiver, running_receiver
from tests.support import free_port, running, wait_until
from worklist.pages import results_block
from worklist.present import entry_json

pytestmark = [pytest.mark.integration]

BASE_URL = "https://cxr.example"
PATIENT_ID = "SYN-HL7-0001"
PATIENT_NAME = "Synthetic^Alice^^Ms"


def _queue(services: Services) -> str:
    return f"{services.queue_name}-hl7results"


@pytest.fixture
def start_sender(
    services: Services, tmp_path: Path
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """``cxr-triage send-results`` with HL7 destinations only (retries 1, 1, 1 ... s)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    client = redis.Redis.from_url(services.broker_url)
    client.delete(_queue(services))
    client.close()

    def _start(hl7_destinations: str, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        env = services.env()
        env.update(
            CXR_RESULTS_QUEUE_NAME=_queue(services),
            CXR_RESULT_DESTINATIONS="",
            CXR_RESULT_RETRY_MAX_BACKOFF_S="1",
            CXR_HL7_DESTINATIONS=hl7_destinations,
            CXR_HL7_SENDING_FACILITY="CXR",
            CXR_HL7_RECEIVING_APPLICATION="RIS",
            CXR_HL7_RECEIVING_FACILITY="HOSPITAL",
            CXR_HL7_TIMEOUT_S="3",
            CXR_WEB_BASE_URL=BASE_URL,
        )
        env.update(extra)
        path = tmp_path / f"send-results-{len(procs)}.log"
        log = open(path, "wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "send-results"], env=env, stdout=log, stderr=log
        )
        procs.append(proc)
        return proc, path

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


def _instance(
    engine: Engine,
    tmp_path: Path,
    *,
    study_uid: str | None = None,
    accession: str = "",
    modality: str = "CR",
    view: str = "PA",
) -> tuple[int, Dataset]:
    ds = make_dataset(study_uid=study_uid, accession=accession, modality=modality, view=view)
    ds.PatientID = PATIENT_ID
    ds.PatientName = PATIENT_NAME
    ds.StudyDate, ds.StudyTime = "20261206", "073000"
    ds.StudyDescription = "XR CHEST PA"
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    rec = repo.InstanceRecord(
        study_instance_uid=str(ds.StudyInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        accession_number=accession or None,
        modality=modality,
        body_part="CHEST",
        view_position=view,
        calling_ae_title="TEST",
        storage_uri=path.as_uri(),
        size_bytes=path.stat().st_size,
    )
    return repo.record_instance(engine, rec).instance_id, ds


def _complete_and_enqueue(engine: Engine, services: Services) -> list[results_db.CompletedStudy]:
    done = results_db.complete_quiet_studies(engine, 0.0)
    app = make_celery(services.broker_url)
    for study in done:
        enqueue_results(
            app,
            ResultsJob(
                study_id=study.study_id,
                study_instance_uid=study.study_instance_uid,
                result_version=study.result_version,
            ),
            _queue(services),
        )
        results_db.mark_results_enqueued(engine, study)
    return done


def _results(engine: Engine) -> dict[str, dict[str, object]]:
    out = {}
    for entry in reads.worklist(engine):
        results = entry_json(entry)["results"]
        assert isinstance(results, dict)
        out[entry.study_instance_uid] = results
    return out


def _sends(engine: Engine) -> list[tuple[str, int, str, int, str, str | None, str | None, str]]:
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT s.study_instance_uid, h.result_version, h.destination, h.attempt, "
                "h.status, h.ack_code, h.error, h.message_control_id "
                "FROM hl7_sends h JOIN studies s ON s.id = h.study_id ORDER BY h.id"
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _by_study(receiver: Hl7Receiver, accepted_only: bool = True) -> dict[str, list[hl7.Message]]:
    out: dict[str, list[hl7.Message]] = {}
    for m in receiver.accepted() if accepted_only else list(receiver.messages):
        uid = next(str(s(5)) for s in m.segments("OBX") if str(s(3)(1)(1)) == "110180")
        out.setdefault(uid, []).append(m)
    return out


def _obx(message: hl7.Message) -> dict[str, str]:
    return {str(s(3)(1)(1)): message.unescape(str(s(5))) for s in message.segments("OBX")}


def _wait_state(
    engine: Engine, uids: set[str], state: str, version: int, alive: Callable[[], None]
) -> dict[str, dict[str, object]]:
    def done() -> bool:
        got = _results(engine)
        return all(
            u in got and got[u]["state"] == state and got[u]["result_version"] == version
            for u in uids
        )

    wait_until(done, 120, f"{state} v{version}", alive=alive)
    return _results(engine)


def test_each_receiver_accepts_exactly_one_message_per_study_and_version(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    start_sender: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    with (
        running_receiver("ok") as ok,
        running_receiver("ae_once") as ae_once,
        running_receiver("drop_once") as drop_once,
    ):
        receivers = (ok, ae_once, drop_once)
        # a flagged study, an unflagged one without accession number, a lateral view,
        # a failed decode, and a CT study (not a chest radiograph: nothing is sent)
        flagged_id, flagged = _instance(engine, tmp_path, accession="HL7-A")
        repo.record_prediction(
            engine,
            flagged_id,
            prediction(0.91, threshold=0.3, png=None, version="1.0.0-lite0-strong-e8"),
        )
        with engine.begin() as conn:
            conn.execute(text("UPDATE predictions SET score_lower = 0.85, score_upper = 0.95"))
        quiet_id, quiet = _instance(engine, tmp_path, accession="")
        repo.record_prediction(engine, quiet_id, prediction(0.05, threshold=0.3, png=None))
        lateral_id, lateral = _instance(engine, tmp_path, accession="HL7-C", view="LL")
        repo.record_not_eligible(
            engine, lateral_id, "lateral view (ViewPosition LL) is not scored; frontal PA/AP only"
        )
        failed_id, failed = _instance(engine, tmp_path, accession="HL7-E")
        repo.record_failed(engine, failed_id, "pixel data could not be decoded (test)")
        ct_id, ct = _instance(engine, tmp_path, accession="HL7-D", modality="CT")
        repo.record_not_eligible(engine, ct_id, "modality CT is not a chest radiograph (CR/DX)")
        assert len(_complete_and_enqueue(engine, services)) == 5
        sent = {str(ds.StudyInstanceUID) for ds in (flagged, quiet, lateral, failed)}
        ct_uid = str(ct.StudyInstanceUID)

        proc, log = start_sender(",".join(r.destination for r in receivers))
        results = _wait_state(engine, sent, "results_sent", 1, running([proc], log))

        for receiver in receivers:
            got = _by_study(receiver)
            assert sorted(got) == sorted(sent), receiver.mode  # nothing for the CT study
            assert all(len(v) == 1 for v in got.values()), receiver.mode
        assert ok.answered == ["AA"] * 4
        assert sorted(ae_once.answered) == ["AA"] * 4 + ["AE"] * 4
        assert sorted(drop_once.answered) == ["AA"] * 4 + ["dropped"] * 4

        sends = _sends(engine)
        assert ct_uid not in {s[0] for s in sends}
        for uid in sent:
            mine = [s for s in sends if s[0] == uid]
            assert [(s[2], s[3], s[4], s[5]) for s in mine if s[2] == ok.destination] == [
                (ok.destination, 1, "accepted", "AA")
            ]
            ae = [s for s in mine if s[2] == ae_once.destination]
            assert [(s[3], s[4], s[5]) for s in ae] == [(1, "failed", "AE"), (2, "accepted", "AA")]
            assert ae[0][6] == f"AE: Error; {AE_REASON}"
            dropped = [s for s in mine if s[2] == drop_once.destination]
            assert [(s[3], s[4], s[5]) for s in dropped] == [
                (1, "failed", None),
                (2, "accepted", "AA"),
            ]
            assert dropped[0][6] == "connection closed by the receiver with no acknowledgement"
            # one message control id per (study, version): the retry is the same message
            assert len({s[7] for s in mine}) == 1

        # the flagged study, as the RIS got it
        (message,) = _by_study(ok)[str(flagged.StudyInstanceUID)]
        msh, pid = message.segment("MSH"), message.segment("PID")
        assert [str(msh(i)) for i in (3, 4, 5, 6, 9, 12)] == [
            "CXR_TRIAGE", "CXR", "RIS", "HOSPITAL", "ORU^R01^ORU_R01", "2.5.1",
        ]  # fmt: skip
        assert (str(pid(3)), str(pid(5))) == (PATIENT_ID, "Synthetic^Alice^^^Ms")
        assert str(message.segment("ORC")(2)) == str(message.segment("OBR")(3)) == "HL7-A"
        assert str(message.segment("OBR")(4)) == "^XR CHEST PA"
        assert str(message.segment("OBR")(7)) == "20261206073000"
        assert str(message.segment("OBR")(25)) == "F"
        assert str(message.segment("TQ1")(9)) == "S^Stat^HL70485"
        assert message.unescape(str(message.segment("NTE")(3))) == DISCLAIMER
        rows = _obx(message)
        assert rows["CXR-SCORE"] == "0.9100"
        assert rows["CXR-FLAG"] == "Y^Yes^HL70136"
        assert rows["CXR-THRESHOLD"] == "0.3000"
        assert (rows["CXR-SCORE-LOW95"], rows["CXR-SCORE-HIGH95"]) == ("0.8500", "0.9500")
        assert rows["CXR-FINDING"] == "233604007^Pneumonia^SCT"
        assert rows["CXR-MODEL"] == "cxr-pneumonia 1.0.0-lite0-strong-e8"
        assert rows["CXR-LINK"].startswith(f"{BASE_URL}/studies/{flagged.StudyInstanceUID}^")

        (message,) = _by_study(ok)[str(quiet.StudyInstanceUID)]
        assert str(message.segment("OBR")(3)) == str(quiet.StudyInstanceUID)  # no accession
        assert _obx(message)["CXR-FLAG"] == "N^No^HL70136"
        with pytest.raises(KeyError):
            message.segment("TQ1")
        (message,) = _by_study(ok)[str(lateral.StudyInstanceUID)]
        rows = _obx(message)
        assert rows["CXR-STATUS"].startswith("NOT_ELIGIBLE^")
        assert rows["CXR-REASON"].startswith("lateral view (ViewPosition LL)")
        assert "CXR-SCORE" not in rows
        (message,) = _by_study(ok)[str(failed.StudyInstanceUID)]
        assert _obx(message)["CXR-STATUS"].startswith("FAILED^")
        assert _obx(message)["CXR-REASON"] == "pixel data could not be decoded (test)"

        # shown where result sends are shown: the worklist JSON and the study page
        hl7_json = results[str(flagged.StudyInstanceUID)]["hl7"]
        assert isinstance(hl7_json, list)
        assert sorted((h["destination"], h["attempt"], h["status"]) for h in hl7_json) == sorted(
            [
                (ok.destination, 1, "accepted"),
                (ae_once.destination, 2, "accepted"),
                (drop_once.destination, 2, "accepted"),
            ]
        )
        (entry,) = [
            e for e in reads.worklist(engine) if e.study_instance_uid == flagged.StudyInstanceUID
        ]
        page = str(results_block(entry.results))
        assert "Results in the RIS (HL7)" in page
        assert ae_once.destination in page

        # a late instance: version 2, sent again as a correction, once per receiver
        late_id, _ = _instance(engine, tmp_path, study_uid=str(flagged.StudyInstanceUID))
        repo.record_prediction(engine, late_id, prediction(0.95, threshold=0.3, png=None))
        (reopened,) = _complete_and_enqueue(engine, services)
        assert reopened.result_version == 2
        _wait_state(engine, {reopened.study_instance_uid}, "results_sent", 2, running([proc], log))
        for receiver in receivers:
            versions = _by_study(receiver)[reopened.study_instance_uid]
            assert [str(m.segment("OBR")(25)) for m in versions] == ["F", "C"], receiver.mode
            assert _obx(versions[1])["CXR-SCORE"] == "0.9500"
            assert str(versions[0].segment("MSH")(10)) != str(versions[1].segment("MSH")(10))
        v2 = [s for s in _sends(engine) if s[0] == reopened.study_instance_uid and s[1] == 2]
        assert sorted(s[2] for s in v2 if s[4] == "accepted") == sorted(
            r.destination for r in receivers
        )

        # a redelivered job sends nothing again
        messages_before = [len(r.messages) for r in receivers]
        sends_before = _sends(engine)
        _requeue = ResultsJob(
            study_id=reopened.study_id,
            study_instance_uid=reopened.study_instance_uid,
            result_version=2,
        )
        enqueue_results(make_celery(services.broker_url), _requeue, _queue(services))
        client = redis.Redis.from_url(services.broker_url)
        mine = _queue(services).encode()
        wait_until(
            lambda: (
                client.llen(_queue(services)) == 0
                and not any(mine in v for v in client.hvals("unacked"))
            ),
            30,
            "the redelivered job done (acknowledged)",
        )
        client.close()
    assert [len(r.messages) for r in receivers] == messages_before
    assert _sends(engine) == sends_before

    # the sender's log names UIDs and control ids, never the patient
    text_log = log.read_text(errors="replace")
    assert str(flagged.StudyInstanceUID) in text_log
    for secret in (PATIENT_ID, "Synthetic", "Alice", AE_REASON):
        assert secret not in text_log


def test_rejects_garbage_silence_and_no_listener_are_recorded_and_fail_visibly(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    start_sender: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    with (
        running_receiver("reject") as reject,
        running_receiver("garbage") as garbage,
        running_receiver("silent") as silent,
    ):
        instance_id, ds = _instance(engine, tmp_path, accession="HL7-F")
        repo.record_prediction(engine, instance_id, prediction(0.7, threshold=0.3, png=None))
        _complete_and_enqueue(engine, services)
        destinations = [reject.destination, garbage.destination, silent.destination, nobody]
        proc, log = start_sender(
            ",".join(destinations), CXR_RESULT_MAX_RETRIES="2", CXR_HL7_TIMEOUT_S="1"
        )
        results = _wait_state(
            engine, {str(ds.StudyInstanceUID)}, "results_failed", 1, running([proc], log)
        )
    sends = _sends(engine)
    assert {s[4] for s in sends} == {"failed"}  # nothing accepted
    by_destination: dict[str, list[tuple[int, str | None, str | None]]] = {}
    for s in sends:
        by_destination.setdefault(s[2], []).append((s[3], s[5], s[6]))
    assert sorted(by_destination) == sorted(destinations)
    for attempts in by_destination.values():
        assert [a[0] for a in attempts] == [1, 2, 3]  # 1 + CXR_RESULT_MAX_RETRIES
    assert by_destination[reject.destination][0][1:] == ("AR", f"AR: {AR_REASON}")
    assert by_destination[garbage.destination][0][1:] == (
        None,
        "answer is not an ACK of this message: the answer is not an HL7 message "
        "(no MSH segment first)",
    )
    assert by_destination[silent.destination][0][1:] == (
        None,
        "no acknowledgement within the timeout",
    )
    assert by_destination[nobody][0][1:] == (None, "connection refused")
    assert len(reject.messages) == len(garbage.messages) == len(silent.messages) == 3
    hl7_json = results[str(ds.StudyInstanceUID)]["hl7"]
    assert isinstance(hl7_json, list)
    assert {(h["status"], h["attempt"]) for h in hl7_json} == {("failed", 3)}
    assert "gave up after 3 attempts" in log.read_text(errors="replace")
    # and counted for /metrics (cxr_hl7_sends_total{outcome})
    from cxr_db.instances.stats import read_snapshot

    assert read_snapshot(engine).results.hl7_sends == {"failed": 12}


def test_a_message_that_cannot_be_built_is_recorded_and_fails_the_job(
    engine: Engine, services: Services, tmp_path: Path
) -> None:
    """Every stored file of the study is gone: no header, no message. The attempt says so
    on each receiver, nothing reaches the RIS, and the task gives up (results_failed)."""
    from cxr_common.settings import ResultSettings
    from cxr_hl7 import Hl7Error
    from cxr_sender.results import ResultsRuntime

    with running_receiver("ok") as ok:
        instance_id, ds = _instance(engine, tmp_path, accession="HL7-G")
        (tmp_path / f"{ds.SOPInstanceUID}.dcm").unlink()
        repo.record_failed(engine, instance_id, "stored DICOM file not found")
        (study,) = results_db.complete_quiet_studies(engine, 0.0)
        settings = ResultSettings(
            database_url=services.database_url,
            broker_url=services.broker_url,
            data_dir=services.data_dir,
            hl7_destinations=ok.destination,
            hl7_timeout_s=3,
        )
        runtime = ResultsRuntime(engine, settings)
        job = ResultsJob(
            study_id=study.study_id,
            study_instance_uid=study.study_instance_uid,
            result_version=study.result_version,
        )
        with pytest.raises(Hl7Error, match="no instance of the study has a readable header"):
            runtime.process(job)
        runtime.give_up(job, "result objects cannot be built")  # what the task does next
    assert ok.messages == []
    ((uid, version, destination, attempt, status, ack, error, _),) = _sends(engine)
    assert (uid, version, destination, attempt, status, ack) == (
        str(ds.StudyInstanceUID), 1, ok.destination, 1, "failed", None,
    )  # fmt: skip
    assert error == "message cannot be built: no instance of the study has a readable header"
    assert _results(engine)[str(ds.StudyInstanceUID)]["state"] == "results_failed"
