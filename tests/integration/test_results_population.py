"""Issue 8 → 9: what goes to PACS says whether the score triaged.

Rows are written through the real repository functions (as the worker writes them), the
study is completed by the real completeness query, and ``ResultsRuntime.process`` sends the
objects to a real pynetdicom SCP on loopback. A study outside the validated population gets
an SC headed "OUTSIDE VALIDATED POPULATION: score not used for triage" and an SR with a
shadow score, the population and the reason, and no flag; a shadow model's prediction never
reaches PACS, however high its score."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from sqlalchemy import Engine

from cxr_common.settings import ResultSettings
from cxr_db.instances import writes as repo
from cxr_db.results import store as results_db
from cxr_queue import ResultsJob
from cxr_results.render import result_text
from cxr_results.summary import NOT_USED_FOR_TRIAGE, OUTSIDE_POPULATION
from cxr_sender.results import ResultsOutcome, ResultsRuntime
from tests.conftest import Services
from tests.db_rows import prediction
from tests.dicom_factory import make_dataset, write
from tests.integration.results_peers import Received, start_scp
from tests.results_helpers import UID_ROOT, sr_groups, sr_items, sr_value

pytestmark = [pytest.mark.integration]

REASON = "age 60 y; model validated for 1-5 y"
SHADOW_VERSION = "v2-shadow"


@pytest.fixture
def pacs() -> Iterator[tuple[Received, int]]:
    received = Received()
    ae, server, port = start_scp(received)
    yield received, port
    server.shutdown()  # type: ignore[attr-defined]
    ae.shutdown()


def _instance(engine: Engine, tmp_path: Path, study: str) -> tuple[int, Dataset]:
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
    return repo.record_instance(engine, rec).instance_id, ds


def _send(engine: Engine, services: Services, port: int) -> None:
    (study,) = results_db.complete_quiet_studies(engine, 0.0)
    settings = ResultSettings(
        database_url=services.database_url,
        broker_url=services.broker_url,
        data_dir=services.data_dir,
        uid_root=UID_ROOT,
        result_destinations=f"TEST_PACS@127.0.0.1:{port}",
        result_timeout_s=5,
    )
    runtime = ResultsRuntime(engine, settings)
    job = ResultsJob(
        study_id=study.study_id,
        study_instance_uid=study.study_instance_uid,
        result_version=study.result_version,
    )
    assert runtime.process(job) is ResultsOutcome.SENT


def _objects(received: Received) -> tuple[Dataset, Dataset]:
    by_class = {str(ds.SOPClassUID): ds for ds in received.datasets}
    return by_class[SecondaryCaptureImageStorage], by_class[Comprehensive3DSRStorage]


def test_an_outside_population_study_goes_to_pacs_as_a_shadow_score_with_the_reason(
    engine: Engine, services: Services, tmp_path: Path, pacs: tuple[Received, int]
) -> None:
    received, port = pacs
    study = "1.2.826.0.1.3680043.10.1024.88.1"
    instance_id, source = _instance(engine, tmp_path, study)
    # the active model scored it outside the validated population (shadow: no triage) ...
    repo.record_prediction(
        engine,
        instance_id,
        prediction(0.057, threshold=0.3, png=None),
        triage=False,
        population=repo.PopulationNote("outside", REASON),
    )
    # ... and a shadow model gave it a high score, which must not reach PACS
    repo.record_shadow_prediction(
        engine, instance_id, prediction(0.97, threshold=0.3, png=None, version=SHADOW_VERSION)
    )
    inputs = results_db.result_inputs(engine, 1)
    assert inputs is not None
    assert inputs.best is not None
    assert (inputs.best.model_version, inputs.best.triage) == ("v1", False)
    assert (inputs.best.population, inputs.best.population_reason) == ("outside", REASON)

    _send(engine, services, port)

    sc, sr = _objects(received)
    assert str(sr.StudyInstanceUID) == study
    items = sr_items(sr)
    statement = f"{OUTSIDE_POPULATION}: {NOT_USED_FOR_TRIAGE} ({REASON})"
    assert sr_value(items["Population statement"]) == statement
    assert sr_value(items["Validated population"]) == ("OUTSIDE", "99CXR")
    assert sr_value(items["Shadow score, not used for triage"]) == pytest.approx(0.057)
    assert "Triage score" not in items
    assert "Flagged for priority reading" not in items  # not presented as a triage result
    assert sr_value(items["Algorithm Version"]) == "v1"  # the active model, not the shadow
    assert sr_value(items["Source of Measurement"])[1] == str(source.SOPInstanceUID)
    assert statement in str(sc.DerivationDescription)
    assert "shadow score 0.057" in str(sc.DerivationDescription)
    assert SHADOW_VERSION not in str(sc.SeriesDescription) + str(sr.SeriesDescription)


def test_an_in_scope_score_triages_and_a_shadow_models_higher_score_is_never_sent(
    engine: Engine, services: Services, tmp_path: Path, pacs: tuple[Received, int]
) -> None:
    received, port = pacs
    study = "1.2.826.0.1.3680043.10.1024.88.2"
    child, child_ds = _instance(engine, tmp_path, study)
    adult, _ = _instance(engine, tmp_path, study)
    repo.record_prediction(
        engine,
        child,
        prediction(0.62, threshold=0.3, png=None),
        population=repo.PopulationNote("in_scope", "age 3 y; within 1-5 y"),
    )
    # an outside instance with a higher shadow score does not take the study's result
    repo.record_prediction(
        engine,
        adult,
        prediction(0.9, threshold=0.3, png=None),
        triage=False,
        population=repo.PopulationNote("outside", REASON),
    )
    for instance_id in (child, adult):  # the shadow model's newer, higher scores
        repo.record_shadow_prediction(
            engine, instance_id, prediction(0.99, threshold=0.3, png=None, version=SHADOW_VERSION)
        )

    _send(engine, services, port)

    sc, sr = _objects(received)
    # one measurement group per scored image, the one that triaged first
    items, outside = sr_groups(sr)
    assert sr_value(items["Triage score"]) == pytest.approx(0.62)
    assert sr_value(items["Flagged for priority reading"]) == ("373066001", "SCT")
    assert sr_value(items["Validated population"]) == ("IN_SCOPE", "99CXR")
    assert "Population statement" not in items
    assert "Shadow score, not used for triage" not in items
    assert sr_value(items["Algorithm Version"]) == "v1"
    assert sr_value(items["Source of Measurement"])[1] == str(child_ds.SOPInstanceUID)
    assert OUTSIDE_POPULATION not in str(sc.DerivationDescription)
    # the outside image: its active model's shadow score, never the shadow model's 0.99
    assert sr_value(outside["Analysis status"]) == ("SHADOW", "99CXR")
    assert sr_value(outside["Shadow score, not used for triage"]) == pytest.approx(0.9)
    assert "Flagged for priority reading" not in outside
    assert sr_value(outside["Algorithm Version"]) == "v1"
    assert not any(
        item.ValueType == "NUM" and float(item.MeasuredValueSequence[0].NumericValue) > 0.95
        for group in (items, outside)
        for item in group.values()
    )


def test_the_secondary_capture_text_heads_a_shadow_score_with_the_population_statement() -> None:
    from tests.results_helpers import summary

    triaged = summary(score=0.8, flagged=True)
    header, _ = result_text(triaged)
    assert any("FLAGGED for priority reading" in line for line, _ in header)
    assert not any(OUTSIDE_POPULATION in line for line, _ in header)

    # the worker never flags a shadow score; even a stray flag is not shown as triage
    shadow = dataclasses.replace(
        triaged, triage=False, population="outside", population_reason=REASON
    )
    lines = [line for line, _ in result_text(shadow)[0]]
    assert lines[1] == f"{OUTSIDE_POPULATION}: {NOT_USED_FOR_TRIAGE} ({REASON})"
    assert "shadow score 0.800" in lines[2]
    assert "not a triage result" in lines[2]
    assert not any("FLAGGED" in line or "not flagged" in line for line in lines)
    unknown = dataclasses.replace(shadow, population="unknown", population_reason=None)
    assert result_text(unknown)[0][1][0] == f"POPULATION UNKNOWN: {NOT_USED_FOR_TRIAGE}"
