"""STOW-RS out: result objects to a DICOMweb destination.

Orthanc's DICOMweb plugin (a server nobody here wrote) receives the Secondary Capture and
the SR with HTTP basic auth and lists them by QIDO-RS; wrong credentials fail each object
with the HTTP status; nothing listening is an AssociationError (retried like C-STORE). Our
own STOW-RS endpoint, with a sender's bearer token, answers a FailedSOPSequence that the
client reads object by object. The results sender records its attempt against the URL and
sends a result version once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from sqlalchemy import Engine, text

from cxr_common.settings import ResultSettings
from cxr_common.storage import FileStorage
from cxr_db.accounts.tables import Role
from cxr_db.instances import writes as repo
from cxr_db.results import store as results_db
from cxr_ingest import Ingest
from cxr_queue import ResultsJob, make_celery
from cxr_results import (
    AssociationError,
    DicomwebDestination,
    build_secondary_capture,
    build_structured_report,
    parse_destination,
    result_uids,
)
from cxr_results.stow import DicomwebAuth, send_objects
from cxr_sender.results import ResultsOutcome, ResultsRuntime
from tests.conftest import SAMPLES, Services
from tests.db_rows import prediction
from tests.dicom_factory import make_dataset, write
from tests.orthanc import PASSWORD, USER, Orthanc, running_orthanc
from tests.peers import requires_peer
from tests.results_helpers import UID_ROOT, overlay, summary
from tests.support import free_port
from tests.web_server import add_token, reset_accounts, serve, web_config

pytestmark = pytest.mark.integration

AUTH = DicomwebAuth(username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    from tests.peers import require_peer

    require_peer("orthanc")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def objects() -> tuple[Dataset, Dataset, Dataset]:
    """(source, Secondary Capture, SR) for the committed sample rsna-opacity-1.dcm."""
    source = pydicom.dcmread(SAMPLES / "rsna-opacity-1.dcm")
    uids = result_uids(UID_ROOT, source.StudyInstanceUID, 1)
    sc = build_secondary_capture(source, overlay(source), summary(), uids, max_side=512)
    sr = build_structured_report(source, summary(), uids, sc)
    return source, sc, sr


def _instances(pacs: Orthanc, study: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of ``study`` in Orthanc, by QIDO-RS."""
    found = pacs.get(f"/dicom-web/studies/{study}/instances")
    return {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in found}


@requires_peer("orthanc")
def test_orthanc_receives_both_objects_by_stow_rs_with_basic_auth(
    orthanc: Orthanc, objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    source, sc, sr = objects
    destination = parse_destination(orthanc.dicomweb + "/")
    assert destination == DicomwebDestination(orthanc.dicomweb)
    assert isinstance(destination, DicomwebDestination)
    outcomes = send_objects(destination, [sc, sr], AUTH, timeout_s=30)
    assert [(o.sop_instance_uid, o.stored, o.status) for o in outcomes] == [
        (sc.SOPInstanceUID, True, 0),
        (sr.SOPInstanceUID, True, 0),
    ]
    assert _instances(orthanc, source.StudyInstanceUID) == {
        sc.SOPInstanceUID: SecondaryCaptureImageStorage,
        sr.SOPInstanceUID: Comprehensive3DSRStorage,
    }
    # a resend (an ambiguous failure retried) stores the same UIDs again, no duplicate
    again = send_objects(destination, [sc, sr], AUTH, timeout_s=30)
    assert all(o.stored for o in again)
    assert len(_instances(orthanc, source.StudyInstanceUID)) == 2


@requires_peer("orthanc")
def test_wrong_credentials_fail_each_object_with_the_http_status(
    orthanc: Orthanc, objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    _, sc, sr = objects
    wrong = DicomwebAuth(username=USER, password="not-the-password")
    outcomes = send_objects(DicomwebDestination(orthanc.dicomweb), [sc, sr], wrong, 30)
    assert [o.stored for o in outcomes] == [False, False]
    assert all("HTTP 401" in (o.reason or "") for o in outcomes)
    assert all("not-the-password" not in (o.reason or "") for o in outcomes)


def test_nothing_listening_is_an_association_error(
    objects: tuple[Dataset, Dataset, Dataset],
) -> None:
    _, sc, _ = objects
    destination = DicomwebDestination(f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(AssociationError, match="no answer"):
        send_objects(destination, [sc], AUTH, timeout_s=5)


def test_our_endpoint_with_a_bearer_token_answers_object_by_object(
    engine: Engine, services: Services, tmp_path: Path, objects: tuple[Dataset, Dataset, Dataset]
) -> None:
    db = reset_accounts(engine)
    token = add_token(db, "results-loop", Role.SENDER)
    rules = Ingest(
        db,
        FileStorage(tmp_path / "instances"),
        make_celery(services.broker_url, services.queue_name),
        services.queue_name,
        uid_root=UID_ROOT,
    )
    _, sc, _ = objects
    mr = make_dataset(sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")
    with serve(db, web_config(), stow=rules) as url:
        destination = DicomwebDestination(f"{url}/dicomweb")
        # our own SC comes back: acknowledged; the MR is not a class we store: 0x0122
        outcomes = send_objects(destination, [sc, mr], DicomwebAuth(token=token), 30)
        assert [(o.stored, o.status) for o in outcomes] == [(True, 0), (False, 0x0122)]
        assert "FailureReason 0x0122" in (outcomes[1].reason or "")
        assert "HTTP 202" in (outcomes[1].reason or "")
        refused = send_objects(destination, [sc], DicomwebAuth(token="x" * 40), 30)
        assert [(o.stored, o.status) for o in refused] == [(False, None)]
        assert "HTTP 401" in (refused[0].reason or "")


def _scored_study(engine: Engine, tmp_path: Path) -> str:
    study = "1.2.826.0.1.3680043.10.1024.88.77"
    ds = make_dataset(study_uid=study)
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    rec = repo.InstanceRecord(
        study_instance_uid=study,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        accession_number=None,
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        calling_ae_title="TEST",
        storage_uri=path.as_uri(),
        size_bytes=path.stat().st_size,
    )
    instance_id = repo.record_instance(engine, rec).instance_id
    repo.record_prediction(engine, instance_id, prediction(0.81, threshold=0.3, png=None))
    return study


@requires_peer("orthanc")
def test_results_sender_stows_a_result_version_once_and_records_the_attempt(
    engine: Engine, services: Services, tmp_path: Path, orthanc: Orthanc
) -> None:
    study = _scored_study(engine, tmp_path)
    (complete,) = results_db.complete_quiet_studies(engine, 0.0)
    settings = ResultSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        data_dir=services.data_dir,
        uid_root=UID_ROOT,
        result_destinations=f"{orthanc.dicomweb}",
        result_dicomweb_username=USER,
        result_dicomweb_password=PASSWORD,
        result_timeout_s=10,
    )
    runtime = ResultsRuntime(engine, settings)
    assert PASSWORD not in repr(runtime.dicomweb_auth)
    job = ResultsJob(
        study_id=complete.study_id,
        study_instance_uid=study,
        result_version=complete.result_version,
    )
    assert runtime.process(job) is ResultsOutcome.SENT
    assert runtime.process(job) is ResultsOutcome.SENT  # redelivered: nothing sent again
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT destination, status, sc_sop_instance_uid, sr_sop_instance_uid, "
                "seg_sop_instance_uid, sc_status, sr_status, seg_status FROM result_sends"
            )
        ).all()
    (row,) = rows
    assert (row.destination, row.status, row.sc_status, row.sr_status) == (
        orthanc.dicomweb,
        "sent",
        0,
        0,
    )
    # a SEG only where the prediction has a heatmap; recorded with its status when sent
    assert row.seg_status == (None if row.seg_sop_instance_uid is None else 0)
    recorded = (row.sc_sop_instance_uid, row.sr_sop_instance_uid, row.seg_sop_instance_uid)
    assert set(_instances(orthanc, study)) == {uid for uid in recorded if uid}
