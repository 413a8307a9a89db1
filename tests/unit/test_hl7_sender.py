"""What the results sender makes of a study for the RIS (no service): the status of each
kind of study, the shadow score kept out, which studies get nothing, the header read."""

from __future__ import annotations

import dataclasses
import itertools

from pydicom.dataset import Dataset

from cxr_common.model_files import read_finding, shipped_model_dir
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.results.states import ResultState
from cxr_db.results.store import ResultInputs, ScoredInstance, SeenInstance
from cxr_hl7 import AnalysisStatus
from cxr_sender.hl7 import is_not_chest, study_result

UID = "1.2.826.0.1.3680043.10.1024.99.7"
FINDING = read_finding(shipped_model_dir())
_NUMBERS = itertools.count(1)


def _seen(status: InstanceStatus, reason: str | None = None) -> SeenInstance:
    return SeenInstance(f"1.2.3.{next(_NUMBERS)}", "file:///x", status, reason)


def _inputs(best: ScoredInstance | None, *seen: SeenInstance) -> ResultInputs:
    return ResultInputs(1, UID, ResultState.COMPLETE, 3, None, False, best, tuple(seen))


def _best(**changes: object) -> ScoredInstance:
    best = ScoredInstance(
        sop_instance_uid="1.2.3.9",
        storage_uri="file:///x",
        probability=0.7,
        threshold=0.3,
        flagged=True,
        model_name="cxr-pneumonia",
        model_version="v1",
        weights_sha256="0" * 64,
        calibration_version=None,
        heatmap_png=None,
        score_lower=0.6,
        score_upper=0.8,
    )
    return dataclasses.replace(best, **changes)  # type: ignore[arg-type]


def _header() -> Dataset:
    ds = Dataset()
    ds.PatientID = "SYN-1"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientName = "Synthetic^Bob"
    ds.AccessionNumber = "ACC-9"
    ds.StudyDate, ds.StudyTime = "20261206", "0730"
    code = Dataset()
    code.CodeValue, code.CodeMeaning, code.CodingSchemeDesignator = "RPX1", "XR Chest", "L"
    ds.RequestedProcedureCodeSequence = [code]
    ds.StudyDescription = "ignored when a code is present"
    return ds


LATERAL = "lateral view (ViewPosition LL) is not scored; frontal PA/AP only"
CT = "modality CT is not a chest radiograph (CR/DX)"
ABDOMEN = "body part ABDOMEN is not chest"


def test_a_scored_study_carries_score_flag_interval_and_the_header() -> None:
    inputs = _inputs(_best(), _seen(InstanceStatus.DONE))
    result = study_result(inputs, _header(), lambda v: FINDING, "https://x/studies/" + UID)
    assert result.status is AnalysisStatus.SCORED
    assert (result.score, result.threshold, result.flagged) == (0.7, 0.3, True)
    assert result.score_interval == (0.6, 0.8)
    assert result.priority_stat
    assert (result.patient.patient_id, result.patient.issuer) == ("SYN-1", "HOSP")
    assert result.patient.name == "Synthetic^Bob"
    assert result.order_number == "ACC-9"
    assert result.procedure is not None
    assert (result.procedure.code_value, result.procedure.text) == ("RPX1", "XR Chest")
    assert result.study_datetime is not None
    assert result.study_datetime.isoformat() == "2026-12-06T07:30:00"
    assert result.result_version == 3
    assert result.finding == FINDING


def test_a_shadow_score_is_outside_population_with_no_score_and_no_priority() -> None:
    best = _best(triage=False, flagged=True, population="outside", population_reason="age 60 y")
    result = study_result(_inputs(best), _header(), lambda v: FINDING, None)
    assert result.status is AnalysisStatus.OUTSIDE_POPULATION
    assert result.reason == "age 60 y"
    assert result.score is None
    assert not result.priority_stat


def test_studies_not_analysed_and_what_they_say() -> None:
    failed = _inputs(
        None,
        _seen(InstanceStatus.FAILED, "pixel data could not be decoded"),
        _seen(InstanceStatus.NOT_ELIGIBLE, LATERAL),
    )
    result = study_result(failed, Dataset(), None, None)
    assert (result.status, result.reason) == (
        AnalysisStatus.FAILED,
        "pixel data could not be decoded",
    )
    assert result.order_number == UID  # no accession in the header
    assert result.procedure is None
    lateral = study_result(
        _inputs(None, _seen(InstanceStatus.NOT_ELIGIBLE, LATERAL)), Dataset(), None, None
    )
    assert (lateral.status, lateral.reason) == (AnalysisStatus.NOT_ELIGIBLE, LATERAL)


def test_only_studies_with_no_chest_radiograph_at_all_get_nothing() -> None:
    assert is_not_chest(_inputs(None, _seen(InstanceStatus.NOT_ELIGIBLE, CT)))
    assert is_not_chest(
        _inputs(
            None,
            _seen(InstanceStatus.NOT_ELIGIBLE, CT),
            _seen(InstanceStatus.NOT_ELIGIBLE, ABDOMEN),
        )
    )
    # a lateral chest film beside the CT, a failed image, a scored one: a result is due
    assert not is_not_chest(
        _inputs(
            None,
            _seen(InstanceStatus.NOT_ELIGIBLE, CT),
            _seen(InstanceStatus.NOT_ELIGIBLE, LATERAL),
        )
    )
    assert not is_not_chest(
        _inputs(None, _seen(InstanceStatus.NOT_ELIGIBLE, CT), _seen(InstanceStatus.FAILED, "x"))
    )
    assert not is_not_chest(_inputs(_best(), _seen(InstanceStatus.NOT_ELIGIBLE, CT)))
    assert not is_not_chest(_inputs(None))


def test_hl7_sends_are_exported_by_outcome() -> None:
    from cxr_db.instances.stats import ResultsSnapshot
    from worklist.metrics_collector import results_metrics

    snap = ResultsSnapshot({}, {}, 0, 0.0, {"accepted": 3, "failed": 2})
    (family,) = [f for f in results_metrics(snap) if f.name == "cxr_hl7_sends"]
    assert family.type == "counter"
    assert {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "accepted": 3,
        "failed": 2,
    }
    empty = ResultsSnapshot({}, {}, 0, 0.0)
    (family,) = [f for f in results_metrics(empty) if f.name == "cxr_hl7_sends"]
    assert {s.value for s in family.samples} == {0}
