"""Issue 18 part 1 in the results sender: which IHE AI Results objects go where.

Rows are written through the real repository functions (as the listener and the worker
write them), the study is completed by the real completeness query, and
``ResultsRuntime.process`` sends to real pynetdicom SCPs on loopback (Postgres real, no
mocks). Checked: each destination gets its ``[sc+sr+seg]`` selection and an SR that
references only what it got; a study with no chest radiograph gets nothing unless
``CXR_RESULT_NOT_ELIGIBLE_REPORT`` asks; a chest film that failed gets the not-analysed
TID 1500 report; the heatmap Segmentation is sent once per (study, version, destination)
with the derived UID, and a new version supersedes it in the same series."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import Engine, text

from cxr_common.settings import ResultSettings
from cxr_db.instances import writes as repo
from cxr_db.results import store as results_db
from cxr_model import CalibratedScore
from cxr_model.heatmaps import render_overlay_png
from cxr_queue import ResultsJob
from cxr_results import result_uids
from cxr_sender.results import ResultsOutcome, ResultsRuntime
from tests.conftest import SAMPLES, Services
from tests.db_rows import prediction
from tests.dicom_factory import chest_like, make_dataset, write
from tests.integration.results_peers import Received, start_scp
from tests.results_helpers import UID_ROOT, heatmap, sr_groups, sr_items, sr_value

pytestmark = [pytest.mark.integration]

CT = SAMPLES / "ct-small.dcm"


@pytest.fixture
def two_pacs() -> Iterator[tuple[tuple[Received, int], tuple[Received, int]]]:
    peers = []
    for title in ("TEST_PACS", "VIEWER"):
        received = Received()
        ae, server, port = start_scp(received, ae_title=title)
        peers.append((received, port, ae, server))
    yield (peers[0][0], peers[0][1]), (peers[1][0], peers[1][1])
    for _, _, ae, server in peers:
        server.shutdown()  # type: ignore[attr-defined]
        ae.shutdown()


def _record(engine: Engine, ds: Dataset, path: Path, modality: str = "CR") -> int:
    rec = repo.InstanceRecord(
        study_instance_uid=str(ds.StudyInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        accession_number=None,
        modality=modality,
        body_part=str(ds.get("BodyPartExamined", "")) or None,
        view_position=str(ds.get("ViewPosition", "")) or None,
        calling_ae_title="TEST",
        storage_uri=path.as_uri(),
        size_bytes=path.stat().st_size,
    )
    return repo.record_instance(engine, rec).instance_id


def _runtime(
    engine: Engine, services: Services, destinations: str, **extra: object
) -> ResultsRuntime:
    settings = ResultSettings.model_validate(
        {
            "database_url": services.database_url,
            "broker_url": services.broker_url,
            "data_dir": services.data_dir,
            "uid_root": UID_ROOT,
            "result_destinations": destinations,
            "result_timeout_s": 5,
            **extra,
        }
    )
    return ResultsRuntime(engine, settings)


def _complete(engine: Engine) -> ResultsJob:
    (study,) = results_db.complete_quiet_studies(engine, 0.0)
    return ResultsJob(
        study_id=study.study_id,
        study_instance_uid=study.study_instance_uid,
        result_version=study.result_version,
    )


def _overlay_png(ds: Dataset) -> bytes:
    from cxr_imaging import decode_dataset

    flagged = CalibratedScore(logit=2.0, probability=0.9, threshold=0.3, flagged=True)
    return render_overlay_png(decode_dataset(ds).pixels, heatmap(), burned_in=False, score=flagged)


def _sends(engine: Engine) -> list[tuple[str, int, str, str | None, str]]:
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT destination, result_version, status, sc_sop_instance_uid, "
                "sr_sop_instance_uid FROM result_sends ORDER BY id"
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_each_destination_gets_its_selection_once_and_a_new_version_supersedes(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    two_pacs: tuple[tuple[Received, int], tuple[Received, int]],
) -> None:
    (pacs, pacs_port), (viewer, viewer_port) = two_pacs
    source = make_dataset(chest_like(seed=11))
    instance = _record(engine, source, write(source, tmp_path / "a.dcm"))
    repo.record_prediction(
        engine, instance, prediction(0.9, threshold=0.3, png=_overlay_png(source))
    )
    runtime = _runtime(
        engine,
        services,
        f"TEST_PACS@127.0.0.1:{pacs_port},VIEWER@127.0.0.1:{viewer_port}[sr+seg]",
    )
    job = _complete(engine)
    assert runtime.process(job) is ResultsOutcome.SENT
    assert runtime.process(job) is ResultsOutcome.SENT  # a redelivery sends nothing again
    uids = result_uids(UID_ROOT, str(source.StudyInstanceUID), 1)

    classes = [str(ds.SOPClassUID) for ds in pacs.datasets]
    assert sorted(classes) == sorted(
        [SecondaryCaptureImageStorage, SegmentationStorage, Comprehensive3DSRStorage]
    )
    assert [str(ds.SOPClassUID) for ds in viewer.datasets] == [
        SegmentationStorage,
        Comprehensive3DSRStorage,
    ]
    seg = next(ds for ds in pacs.datasets if ds.SOPClassUID == SegmentationStorage)
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (
        uids.seg_sop_instance_uid,
        uids.seg_series_instance_uid,
    )
    assert viewer.datasets[0].SOPInstanceUID == seg.SOPInstanceUID  # the same derived UID
    pacs_sr = sr_items(pacs.datasets[-1])
    viewer_sr = sr_items(viewer.datasets[-1])
    assert "Best illustration of finding" in pacs_sr
    assert "Best illustration of finding" not in viewer_sr  # VIEWER has no SC
    assert sr_value(viewer_sr["Heatmap (fractional segmentation)"])[1] == seg.SOPInstanceUID  # type: ignore[index]
    evidence = viewer.datasets[-1].CurrentRequestedProcedureEvidenceSequence[0]
    referenced = {
        sop.ReferencedSOPInstanceUID
        for series in evidence.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == {source.SOPInstanceUID, seg.SOPInstanceUID}
    sends = _sends(engine)
    assert [(s[0], s[2]) for s in sends] == [
        (f"TEST_PACS@127.0.0.1:{pacs_port}", "sent"),
        (f"VIEWER@127.0.0.1:{viewer_port}", "sent"),
    ]
    assert sends[1][3] is None  # no SC went to VIEWER

    # a late image: version 2 goes into the same series, the SR names version 1's
    late = make_dataset(chest_like(seed=12), study_uid=str(source.StudyInstanceUID))
    late_id = _record(engine, late, write(late, tmp_path / "b.dcm"))
    repo.record_prediction(engine, late_id, prediction(0.95, threshold=0.3, png=_overlay_png(late)))
    job2 = _complete(engine)
    assert job2.result_version == 2
    assert runtime.process(job2) is ResultsOutcome.SENT
    seg2 = viewer.datasets[2]
    assert seg2.SOPClassUID == SegmentationStorage
    assert seg2.SeriesInstanceUID == seg.SeriesInstanceUID
    assert (seg2.SOPInstanceUID, seg2.InstanceNumber) == (
        result_uids(UID_ROOT, str(source.StudyInstanceUID), 2).seg_sop_instance_uid,
        2,
    )
    derived = seg2.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == late.SOPInstanceUID
    sr2 = viewer.datasets[3]
    assert len(sr_groups(sr2)) == 2  # both scored images, the higher score first
    predecessor = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uids.sr_sop_instance_uid


def _ct(engine: Engine, tmp_path: Path) -> Dataset:
    path = tmp_path / "ct.dcm"
    shutil.copy(CT, path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    instance = _record(engine, ds, path, modality="CT")
    repo.record_not_eligible(engine, instance, "modality CT is not a chest radiograph (CR/DX)")
    return ds


def test_a_study_with_no_chest_radiograph_gets_nothing_by_default(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    two_pacs: tuple[tuple[Received, int], tuple[Received, int]],
) -> None:
    (pacs, port), _ = two_pacs
    _ct(engine, tmp_path)
    runtime = _runtime(engine, services, f"TEST_PACS@127.0.0.1:{port}")
    assert runtime.process(_complete(engine)) is ResultsOutcome.NOT_CHEST
    assert pacs.datasets == []
    assert _sends(engine) == []
    with engine.begin() as conn:
        state = conn.execute(text("SELECT result_state FROM studies")).scalar_one()
    assert state == "complete"


def test_the_setting_asks_for_a_not_analysed_report_for_any_study(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    two_pacs: tuple[tuple[Received, int], tuple[Received, int]],
) -> None:
    (pacs, port), _ = two_pacs
    ct = _ct(engine, tmp_path)
    runtime = _runtime(
        engine, services, f"TEST_PACS@127.0.0.1:{port}", result_not_eligible_report=True
    )
    assert runtime.process(_complete(engine)) is ResultsOutcome.SENT
    (sr,) = pacs.datasets
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == ct.StudyInstanceUID
    (group,) = sr_groups(sr)
    assert sr_value(group["Analysis status"]) == ("NOT_ELIGIBLE", "99CXR")
    assert "CT" in str(sr_value(group["Reason not analysed"]))


def test_a_failed_chest_film_gets_the_not_analysed_report_and_an_sc_only_destination_nothing(
    engine: Engine,
    services: Services,
    tmp_path: Path,
    two_pacs: tuple[tuple[Received, int], tuple[Received, int]],
) -> None:
    (pacs, pacs_port), (viewer, viewer_port) = two_pacs
    film = make_dataset(np.full((128, 128), 7, np.uint8))
    instance = _record(engine, film, write(film, tmp_path / "f.dcm"))
    repo.record_failed(engine, instance, "pixel data could not be decoded")
    runtime = _runtime(
        engine,
        services,
        f"TEST_PACS@127.0.0.1:{pacs_port},VIEWER@127.0.0.1:{viewer_port}[sc]",
    )
    assert runtime.process(_complete(engine)) is ResultsOutcome.SENT
    (sr,) = pacs.datasets
    (group,) = sr_groups(sr)
    assert sr_value(group["Analysis status"]) == ("FAILED", "99CXR")
    assert sr_value(group["Reason not analysed"]) == "pixel data could not be decoded"
    assert sr_value(group["Source of Measurement"])[1] == film.SOPInstanceUID  # type: ignore[index]
    assert viewer.datasets == []  # a not-analysed result is an SR, VIEWER takes SCs only
    assert [s[0] for s in _sends(engine)] == [f"TEST_PACS@127.0.0.1:{pacs_port}"]
