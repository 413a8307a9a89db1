"""A study's patient is fixed by its first instance (issue 20): an instance of the same
Study Instance UID naming another patient is refused, recorded as a conflict and never
merged; the database decides between concurrent first instances.

Through the ingest core (real Postgres and Redis) for each rule, and through the
listener over real DICOM associations for the status, the Error Comment and the race.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, text

from cxr_common.storage import FileStorage
from cxr_db.conflicts import store as conflicts
from cxr_db.conflicts.tables import ConflictKind
from cxr_ingest import Disposition, Ingest, Outcome, Received, RefusalCode, Source, Transport
from cxr_ingest import ingest as run_ingest
from cxr_queue import make_celery
from dicom_listener.server import ListenerHandle
from dicom_listener.statuses import StoreStatus
from tests.conftest import Services
from tests.dicom_factory import make_dataset, write
from tests.listener_support import StoreAnswer, store_files

pytestmark = pytest.mark.integration

KEY = b"k" * 32
ROOT = "1.2.826.0.1.3680043.10.999"


@pytest.fixture
def rules(services: Services, engine: Engine, tmp_path: Path) -> Ingest:
    return Ingest(
        engine,
        FileStorage(tmp_path / "instances"),
        make_celery(services.broker_url, services.queue_name),
        services.queue_name,
        uid_root=ROOT,
        patient_key=KEY,
    )


def _patient(study: str, **attributes: str) -> Dataset:
    ds = make_dataset(study_uid=study)
    values = {
        "PatientID": "MRN-A1",
        "IssuerOfPatientID": "HOSP",
        "PatientName": "ALPHA^ANNA",
        "PatientBirthDate": "20200101",
        "PatientSex": "F",
        **attributes,
    }
    for keyword, value in values.items():
        if value == "<absent>":
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _ingest(rules: Ingest, ds: Dataset, tmp_path: Path, peer: str = "198.51.100.7") -> Outcome:
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    return run_ingest(
        rules,
        Received(data=path.read_bytes()),
        Source(Transport.DICOM, "MODALITY", peer, ds.SOPClassUID, ds.SOPInstanceUID),
    )


def _instances(engine: Engine, study: str) -> list[str]:
    with engine.begin() as conn:
        return [
            uid
            for (uid,) in conn.execute(
                text(
                    "SELECT i.sop_instance_uid FROM instances i JOIN studies s "
                    "ON s.id = i.study_id WHERE s.study_instance_uid = :s ORDER BY i.id"
                ),
                {"s": study},
            )
        ]


@pytest.mark.parametrize(
    "second",
    [
        {"PatientName": "alpha^anna "},  # case and padding of name components
        {"PatientName": "Alpha ^ Anna^^^"},  # spaces around components, empty trailing ones
        {"PatientID": "MRN-A1 ", "IssuerOfPatientID": " HOSP", "PatientSex": "f"},
        {"PatientName": "ALPHA^ANNA=アルファ^アンナ"},  # ideographic group not compared
    ],
    ids=["name-case", "name-components", "padding-and-sex-case", "ideographic-group"],
)
def test_the_same_patient_written_differently_joins_the_study(
    rules: Ingest, engine: Engine, tmp_path: Path, second: dict[str, str]
) -> None:
    study = generate_uid()
    first = _patient(study)
    if "=" in second.get("PatientName", ""):
        first.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    again = _patient(study, **second)
    again.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    assert _ingest(rules, first, tmp_path).disposition is Disposition.STORED
    assert _ingest(rules, again, tmp_path).disposition is Disposition.STORED
    assert _instances(engine, study) == [first.SOPInstanceUID, again.SOPInstanceUID]
    assert conflicts.open_conflicts(engine) == []


@pytest.mark.parametrize(
    ("second", "differing"),
    [
        ({"PatientID": "MRN-B2", "PatientName": "BRAVO^BEN"}, "PatientID,PatientName"),
        ({"IssuerOfPatientID": "OTHER-HOSP"}, "IssuerOfPatientID"),
        ({"PatientBirthDate": "20200102"}, "PatientBirthDate"),
        ({"PatientBirthDate": "2020-01-01"}, "PatientBirthDate"),  # not normalised: exact
        ({"PatientSex": "M"}, "PatientSex"),
        ({"PatientName": "ALPHA^ANNE"}, "PatientName"),
        ({"PatientBirthDate": "<absent>"}, "PatientBirthDate"),  # missing on one side
        ({"IssuerOfPatientID": "<absent>"}, "IssuerOfPatientID"),
        ({"PatientID": ""}, "PatientID"),  # empty on one side
    ],
    ids=[
        "other-patient",
        "same-id-other-issuer",
        "other-birth-date",
        "birth-date-format",
        "other-sex",
        "other-given-name",
        "birth-date-missing",
        "issuer-missing",
        "id-empty",
    ],
)
def test_another_patient_in_a_known_study_is_refused_and_recorded(
    rules: Ingest,
    engine: Engine,
    services: Services,
    tmp_path: Path,
    second: dict[str, str],
    differing: str,
) -> None:
    study = generate_uid()
    first = _patient(study)
    other = _patient(study, **second)
    assert _ingest(rules, first, tmp_path).disposition is Disposition.STORED
    refused = _ingest(rules, other, tmp_path, peer="198.51.100.9")
    assert refused.refusal is RefusalCode.PATIENT_CONFLICT
    assert not refused.success
    assert refused.comment == "Study stored for another patient: not stored"
    assert differing.replace(",", ", ") in refused.reason
    for value in ("MRN-", "ALPHA", "BRAVO", "ANNE", "2020", "HOSP"):
        assert value not in refused.reason + refused.comment
    # nothing of the refused instance stored: no row, no file; the first one untouched
    assert _instances(engine, study) == [first.SOPInstanceUID]
    stored = sorted(p.name for p in (tmp_path / "instances").rglob("*.dcm"))
    assert stored == [f"{first.SOPInstanceUID}.dcm"]
    assert not any(rules.storage.staging_dir().iterdir())
    # the sender retries the refused instance: refused again, still one conflict
    again = _ingest(rules, other, tmp_path, peer="198.51.100.9")
    assert again.refusal is RefusalCode.PATIENT_CONFLICT
    (event,) = conflicts.open_conflicts(engine)
    assert event.kind is ConflictKind.PATIENT
    assert (event.study_instance_uid, event.sop_instance_uid) == (study, other.SOPInstanceUID)
    assert event.differing == differing
    assert (event.calling_ae_title, event.peer_address) == ("MODALITY", "198.51.100.9")
    # the study's patient stays the first one's: a later instance of patient A still joins
    third = _patient(study)
    assert _ingest(rules, third, tmp_path).disposition is Disposition.STORED
    # resolved conflicts leave the worklist and ops page
    assert conflicts.resolve_conflict(engine, event.id, "ops-alice")
    assert not conflicts.resolve_conflict(engine, event.id, "ops-bob")
    assert conflicts.open_conflicts(engine) == []


def test_the_identity_is_stored_as_keyed_hashes_without_values(
    rules: Ingest, engine: Engine, tmp_path: Path
) -> None:
    study = generate_uid()
    assert _ingest(rules, _patient(study), tmp_path).disposition is Disposition.STORED
    with engine.begin() as conn:
        stored = conn.execute(
            text("SELECT patient_identity FROM studies WHERE study_instance_uid = :s"),
            {"s": study},
        ).scalar_one()
    assert set(stored) == {
        "form",
        "key",
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
    }
    flat = str(stored)
    for value in ("MRN-A1", "HOSP", "ALPHA", "ANNA", "20200101"):
        assert value not in flat


def test_a_study_recorded_under_another_key_is_refused_not_taken_for_another_patient(
    rules: Ingest, engine: Engine, tmp_path: Path
) -> None:
    from dataclasses import replace

    study = generate_uid()
    assert _ingest(rules, _patient(study), tmp_path).disposition is Disposition.STORED
    other_key = replace(rules, patient_key=b"x" * 32)
    refused = _ingest(other_key, _patient(study), tmp_path)
    assert refused.refusal is RefusalCode.INTERNAL_ERROR
    assert refused.comment == "patient key differs between listeners: not stored"
    assert conflicts.open_conflicts(engine) == []


def test_a_study_from_before_the_identity_takes_its_next_instance_patient(
    rules: Ingest, engine: Engine, tmp_path: Path
) -> None:
    study = generate_uid()
    assert _ingest(rules, _patient(study), tmp_path).disposition is Disposition.STORED
    with engine.begin() as conn:  # as revision 0016 leaves older studies
        conn.execute(
            text("UPDATE studies SET patient_identity = NULL WHERE study_instance_uid = :s"),
            {"s": study},
        )
    b = _patient(study, PatientID="MRN-B2", PatientName="BRAVO^BEN")
    assert _ingest(rules, b, tmp_path).disposition is Disposition.STORED
    refused = _ingest(rules, _patient(study), tmp_path)
    assert refused.refusal is RefusalCode.PATIENT_CONFLICT


def test_the_listener_answers_a_patient_conflict_with_a_status_and_no_phi(
    engine: Engine, listener: int, tmp_path: Path
) -> None:
    study = generate_uid()
    a = write(_patient(study), tmp_path / "a.dcm")
    b = write(_patient(study, PatientID="MRN-B2", PatientName="BRAVO^BEN"), tmp_path / "b.dcm")
    answers = store_files(listener, [a, b])
    assert answers[0] == StoreAnswer(0, None)
    assert answers[1] is not None
    assert answers[1].status == StoreStatus.PATIENT_CONFLICT == 0xC230
    assert answers[1].error_comment == "Study stored for another patient: not stored"
    assert _instances(engine, study) == [dcmread(a, stop_before_pixels=True).SOPInstanceUID]
    (event,) = conflicts.open_conflicts(engine)
    assert event.calling_ae_title == "TEST_SCU"


def test_concurrent_first_instances_of_one_study_from_two_associations_never_both_win(
    engine: Engine,
    start_listener: Callable[..., ListenerHandle],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    port = start_listener().port
    rounds = 6
    studies = [generate_uid() for _ in range(rounds)]
    files = {
        who: [
            write(
                _patient(study, PatientID=f"MRN-{who}", PatientName=f"{who}^PATIENT"),
                tmp_path / f"{who}-{i}.dcm",
            )
            for i, study in enumerate(studies)
        ]
        for who in ("A", "B")
    }
    barrier = threading.Barrier(2)
    answers: dict[str, list[StoreAnswer | None]] = {}

    def send(who: str) -> None:
        got: list[StoreAnswer | None] = []
        for path in files[who]:
            barrier.wait(timeout=60)
            got.extend(store_files(port, [path], calling_ae=f"SCU_{who}"))
        answers[who] = got

    threads = [threading.Thread(target=send, args=(who,)) for who in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(answers) == {"A", "B"}
    for i, study in enumerate(studies):
        pair = [answers["A"][i], answers["B"][i]]
        assert all(p is not None for p in pair)
        statuses = sorted(p.status for p in pair if p is not None)
        assert statuses == [0, 0xC230], (i, statuses)
        assert len(_instances(engine, study)) == 1
    assert len(conflicts.open_conflicts(engine)) == rounds


def test_results_carry_the_study_patient_as_its_first_instance_names_it(
    rules: Ingest, engine: Engine, services: Services, tmp_path: Path
) -> None:
    """The second instance (same patient, written differently) scores higher, so the SC
    is made from it: the SC and SR still carry the first instance's patient attributes,
    and nothing of another spelling."""
    from cxr_common.settings import ResultSettings
    from cxr_db.instances import writes
    from cxr_db.results import store as results_db
    from cxr_results import ALL_OBJECTS
    from cxr_sender.results import ResultsRuntime

    study = generate_uid()
    first = _patient(study)
    second = _patient(study, PatientName="alpha^anna ", PatientSex="f")
    ids = []
    for ds in (first, second):
        outcome = _ingest(rules, ds, tmp_path)
        assert outcome.disposition is Disposition.STORED
        assert outcome.instance_id is not None
        ids.append(outcome.instance_id)
    for instance_id, score in zip(ids, (0.2, 0.9), strict=True):
        writes.record_prediction(
            engine,
            instance_id,
            writes.PredictionRecord(
                model_name="m",
                model_version="1.0.0-lite0-strong-e8",
                weights_sha256="0" * 64,
                calibration_version=None,
                logit=0.0,
                probability=score,
                threshold=0.5,
                flagged=score > 0.5,
                heatmap_png=None,
                device="cpu",
                batch_size=1,
                decode_ms=1.0,
                inference_ms=1.0,
                worker_id="test",
            ),
        )
    with engine.begin() as conn:
        study_id = conn.execute(
            text("SELECT id FROM studies WHERE study_instance_uid = :s"), {"s": study}
        ).scalar_one()
    inputs = results_db.result_inputs(engine, study_id)
    assert inputs is not None
    assert inputs.best is not None
    assert inputs.best.sop_instance_uid == second.SOPInstanceUID  # the SC is made from it
    runtime = ResultsRuntime(
        engine,
        ResultSettings(
            database_url=services.database_url,
            broker_url=services.broker_url,
            data_dir=tmp_path,
            uid_root=ROOT,
        ),
    )
    objects = runtime._build(inputs, None, ALL_OBJECTS, lambda: runtime._build_scored(inputs))
    assert len(objects.datasets) == 2  # SC and SR (no heatmap: no SEG)
    for obj in objects.datasets:
        assert str(obj.PatientName) == "ALPHA^ANNA"
        assert obj.PatientSex == "F"
        assert obj.PatientID == "MRN-A1"
        assert obj.IssuerOfPatientID == "HOSP"
        assert obj.PatientBirthDate == "20200101"


def test_the_worklist_and_ops_page_show_unresolved_patient_conflicts(
    rules: Ingest, engine: Engine, services: Services, tmp_path: Path
) -> None:
    import httpx

    from cxr_db.accounts.tables import Role
    from tests.integration.reading_rows import clean
    from tests.web_server import add_user, serve, sign_in, web_config

    clean(engine)
    study = generate_uid()
    first = _patient(study)
    other = _patient(study, PatientID="MRN-B2", PatientName="BRAVO^BEN")
    assert _ingest(rules, first, tmp_path).disposition is Disposition.STORED
    assert _ingest(rules, other, tmp_path).refusal is RefusalCode.PATIENT_CONFLICT
    add_user(engine, "rita", Role.RADIOLOGIST)
    add_user(engine, "otto", Role.OPS)
    with serve(engine, web_config(broker_url=services.broker_url)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "rita").status_code == 303
            page = http.get("/").text
            assert 'id="patient-conflicts"' in page
            assert f"study {study}</a>" in page
            assert "PatientID, PatientName differ (from MODALITY)" in page
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "otto").status_code == 303
            ops = http.get("/ops").text
            assert 'id="conflicts"' in ops
            assert other.SOPInstanceUID in ops
            assert "<td>patient</td>" in ops
        for text_ in (page, ops):
            for value in ("MRN-B2", "BRAVO", "MRN-A1", "ALPHA"):
                assert value not in text_
        (event,) = conflicts.open_conflicts(engine)
        assert conflicts.resolve_conflict(engine, event.id, "otto")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert sign_in(http, "rita").status_code == 303
            assert 'id="patient-conflicts"' not in http.get("/").text


def test_conflicts_are_listed_and_resolved_from_the_command_line(
    rules: Ingest,
    engine: Engine,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cxr_triage.cli import main

    monkeypatch.setenv("CXR_DATABASE_URL", services.database_url)
    monkeypatch.setenv("CXR_BROKER_URL", services.broker_url)
    study = generate_uid()
    assert _ingest(rules, _patient(study), tmp_path).disposition is Disposition.STORED
    assert _ingest(rules, _patient(study, PatientSex="M"), tmp_path).refusal is (
        RefusalCode.PATIENT_CONFLICT
    )
    (event,) = conflicts.open_conflicts(engine)
    assert main(["conflicts", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{event.id}  patient" in out
    assert f"study={study}" in out
    assert "differs=PatientSex" in out
    assert main(["conflicts", "resolve", str(event.id), "--by", "ops-alice"]) == 0
    assert f"conflict {event.id} resolved by ops-alice" in capsys.readouterr().out
    assert main(["conflicts", "resolve", str(event.id), "--by", "ops-alice"]) == 1
    assert "no unresolved conflict" in capsys.readouterr().err
    assert main(["conflicts", "list"]) == 0
    assert "no unresolved conflict" in capsys.readouterr().out
