"""Issue 8 end to end: the population check in a real worker (shadow scores never triage and
never sink a study below the unscored ones), shadow models, activation without a restart,
rollback, enabling a validated stratum, and drift on the worklist page."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from cxr_db.audit.store import Actor
from cxr_db.audit.tables import ActorKind
from cxr_db.instances import writes as repo
from cxr_db.registry import store as registry
from cxr_db.worklist import reads
from cxr_db.worklist.reads import WorklistEntry
from cxr_model import WEIGHTS_DIR
from cxr_registry import ensure_configured_model
from cxr_triage import models_cli
from cxr_triage.send import send_paths
from tests.conftest import SAMPLES
from tests.db_rows import prediction, record
from tests.dicom_factory import make_dataset, write
from tests.integration.conftest import wait_until_final
from tests.web_server import add_token, add_user, reset_accounts, serve, sign_in, web_config

pytestmark = pytest.mark.integration

Worker = Callable[..., subprocess.Popen[bytes]]
ACTOR = Actor("cli:test", ActorKind.CLI)


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    """A clean registry (the engine fixture clears studies, instances and predictions)."""

    def clear() -> None:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE models, population_strata RESTART IDENTITY"))

    clear()
    yield engine
    clear()


def _copy(src: Path, tmp: Path, name: str, *, age: str | None = None, **attrs: str) -> Path:
    """A sample with new UIDs (its own study) and, optionally, another PatientAge."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = name
    if age is not None:
        ds.PatientAge = age
    for key, value in attrs.items():
        setattr(ds, key, value)
    path = tmp / f"{name}.dcm"
    ds.save_as(path)
    return path


def _by_accession(engine: Engine) -> dict[str, tuple[int, WorklistEntry]]:
    return {e.accession_number or "": (i, e) for i, e in enumerate(reads.worklist(engine))}


def _predictions(engine: Engine) -> list[Any]:
    with engine.begin() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT s.accession_number AS acc, p.model_version, p.model_role, p.triage, "
                    "p.flagged, p.probability, p.threshold, i.population, i.population_reason "
                    "FROM predictions p JOIN instances i ON i.id = p.instance_id "
                    "JOIN studies s ON s.id = i.study_id ORDER BY p.id"
                )
            )
        )


def _send(paths: list[Path], port: int) -> None:
    report = send_paths(paths, "127.0.0.1", port, progress=False)
    assert (report.sent, report.failed) == (len(paths), 0)


def test_outside_population_scores_are_shadow_never_flag_and_never_sink_a_study(
    db: Engine, listener: int, start_worker: Worker, tmp_path: Path
) -> None:
    files = [
        _copy(SAMPLES / "ct-small.dcm", tmp_path, "NOTELIG"),  # not eligible, first to arrive
        _copy(SAMPLES / "rsna-normal-1.dcm", tmp_path, "RSNA-N"),  # header age '54': outside
        _copy(SAMPLES / "rsna-opacity-1.dcm", tmp_path, "RSNA-P"),  # header age '6': outside
        # synthetic film scoring above the threshold (0.39 > 0.28), but from a 54-year-old
        write(_with_age(make_dataset(accession="OUT-HIGH"), "054Y"), tmp_path / "oh.dcm"),
        _copy(SAMPLES / "derived/kermany-normal-1.dcm", tmp_path, "IN-LOW", age="003Y"),
        _copy(SAMPLES / "derived/kermany-pneumonia-1.dcm", tmp_path, "IN-HIGH", age="004Y"),
        _copy(SAMPLES / "derived/kermany-normal-2.dcm", tmp_path, "UNKNOWN"),  # no age
    ]
    _send(files, listener)
    start_worker(batch_size=4, wait_ms=500, log=tmp_path / "worker.log")
    wait_until_final(db, len(files))

    wl = _by_accession(db)
    preds = {p.acc: p for p in _predictions(db)}
    for acc, age in (("RSNA-N", "54 y"), ("RSNA-P", "6 y"), ("OUT-HIGH", "54 y")):
        rank, entry = wl[acc]
        p = preds[acc]
        assert (entry.population, p.population) == ("outside", "outside")
        assert entry.population_reason is not None
        assert f"age {age}; model validated for 1–5 y" in entry.population_reason
        assert (entry.score, entry.flagged) == (None, False), acc  # never triages
        assert entry.shadow_score == pytest.approx(p.probability)  # but is stored and shown
        assert (p.triage, p.flagged, p.model_role) == (False, False, "active")
        # with the unscored studies (after the flagged, before every scored unflagged one)
        assert rank > wl["IN-HIGH"][0]
        assert rank < wl["IN-LOW"][0]
        assert rank < wl["UNKNOWN"][0]
    assert preds["OUT-HIGH"].probability >= preds["OUT-HIGH"].threshold  # would have flagged
    assert wl["RSNA-P"][1].shadow_score < 0.1  # the missed 6-year-old: low, not "likely negative"
    assert wl["NOTELIG"][1].score is None
    assert wl["NOTELIG"][1].population is None
    # in scope: today's behaviour
    for acc, population in (
        ("IN-LOW", "in_scope"),
        ("IN-HIGH", "in_scope"),
        ("UNKNOWN", "unknown"),
    ):
        entry, p = wl[acc][1], preds[acc]
        assert entry.population == population
        assert p.triage
        assert entry.score == pytest.approx(p.probability)
        assert entry.flagged == p.flagged == (p.probability >= p.threshold)
        assert entry.shadow_score is None
    assert wl["IN-HIGH"][1].flagged
    assert not wl["IN-LOW"][1].flagged
    # the JSON API and the pages say so; on the unread page they sit with the not-scored
    reset_accounts(db)
    add_user(db, "ann")
    bearer = {"Authorization": f"Bearer {add_token(db, 'ris')}"}
    with serve(db, web_config()) as base, httpx.Client(base_url=base, timeout=30) as http:
        body = {e["accession_number"]: e for e in http.get("/api/worklist", headers=bearer).json()}
        assert sign_in(http, "ann").status_code == 303
        page = http.get("/").text
        study = http.get(f"/studies/{wl['OUT-HIGH'][1].study_instance_uid}").text
    assert body["RSNA-N"]["population"] == "outside"
    assert "model validated for 1–5 y" in body["RSNA-N"]["population_reason"]
    assert body["RSNA-N"]["score"] is None
    assert body["RSNA-N"]["shadow_score"] == pytest.approx(preds["RSNA-N"].probability)
    assert body["IN-HIGH"]["population"] == "in_scope"
    assert page.count('class="shadow"') == 3
    not_scored = page.index('id="not-scored"')
    for acc in ("RSNA-N", "RSNA-P", "OUT-HIGH", "NOTELIG"):
        assert page.index(f'data-study="{wl[acc][1].study_instance_uid}"') > not_scored, acc
    for acc in ("IN-HIGH", "IN-LOW", "UNKNOWN"):
        assert page.index(f'data-study="{wl[acc][1].study_instance_uid}"') < not_scored, acc
    assert "OUTSIDE the validated population" in study
    assert "not triaged: shadow score" in study
    assert "LIKELY POSITIVE" not in study
    counts = reads.unread_counts(db)
    assert (counts.flagged, counts.unscored) == (1, 4)


def _with_age(ds: pydicom.Dataset, age: str) -> pydicom.Dataset:
    ds.PatientAge = age
    return ds


def test_policy_off_triages_everything_and_unknown_age_can_be_shadow(
    db: Engine, listener: int, start_worker: Worker, tmp_path: Path
) -> None:
    off = start_worker(batch_size=2, wait_ms=100, extra_env={"CXR_POPULATION_POLICY": "off"})
    _send([_copy(SAMPLES / "rsna-normal-1.dcm", tmp_path, "OFF-ADULT")], listener)
    wait_until_final(db, 1)
    off.terminate()
    off.wait(timeout=60)
    start_worker(batch_size=2, wait_ms=100, extra_env={"CXR_UNKNOWN_AGE": "outside"})
    _send([_copy(SAMPLES / "derived/kermany-normal-3.dcm", tmp_path, "NO-AGE")], listener)
    wait_until_final(db, 2)
    wl = _by_accession(db)
    adult = wl["OFF-ADULT"][1]
    assert adult.population == "outside"  # still said, but the site validated everyone
    assert adult.score is not None
    assert adult.shadow_score is None
    assert adult.population_reason is not None
    assert "CXR_POPULATION_POLICY=off" in adult.population_reason
    no_age = wl["NO-AGE"][1]
    assert (no_age.population, no_age.score) == ("unknown", None)
    assert no_age.shadow_score is not None
    assert no_age.population_reason is not None
    assert "CXR_UNKNOWN_AGE=outside" in no_age.population_reason


def _second_model(tmp_path: Path, version: str) -> tuple[Path, Path]:
    """The shipped weights under another version, with a calibration that flags anything."""
    folder = tmp_path / version
    shutil.copytree(WEIGHTS_DIR, folder)
    contract = json.loads((folder / "model.json").read_text())
    contract["version"] = version
    (folder / "model.json").write_text(json.dumps(contract))
    cal = json.loads((folder / "calibration.json").read_text())
    cal.update(version=f"{version}-flag-all", threshold=1e-12, logit_threshold=-60.0)
    (folder / "calibration.json").write_text(json.dumps(cal))
    return folder, folder / "calibration.json"


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(actor="cli:test", **kw)


def test_shadow_model_scores_beside_the_active_one_then_activation_and_rollback_switch_live(
    db: Engine, listener: int, start_worker: Worker, tmp_path: Path
) -> None:
    shipped = ensure_configured_model(db)  # what cxr-triage migrate does
    folder, cal = _second_model(tmp_path, "2.0.0-site")
    models_cli.model_register(
        db, _args(dir=folder, calibration=cal, version=None, reference=None), stdout=_null()
    )
    models_cli.model_shadow(db, _args(version="2.0.0-site"), stdout=_null())
    low = _copy(SAMPLES / "derived/kermany-normal-1.dcm", tmp_path, "ONE", age="003Y")
    start_worker(batch_size=2, wait_ms=100, log=tmp_path / "worker.log")
    _send([low], listener)
    wait_until_final(db, 1)

    one = [p for p in _predictions(db) if p.acc == "ONE"]
    assert {(p.model_version, p.model_role, p.triage) for p in one} == {
        (shipped.version, "active", True),
        ("2.0.0-site", "shadow", False),
    }
    shadow_p = next(p for p in one if p.model_role == "shadow")
    assert shadow_p.probability >= shadow_p.threshold  # the shadow model would flag it...
    assert not shadow_p.flagged
    entry = _by_accession(db)["ONE"][1]
    assert not entry.flagged  # ...but only the active model drives the flag
    assert entry.model_version == shipped.version
    active_p = next(p for p in one if p.model_role == "active")
    assert entry.score == pytest.approx(active_p.probability)

    # activation: the running worker switches after its batch, no restart
    models_cli.model_activate(
        db, _args(version="2.0.0-site", accept_shipped_calibration=True), stdout=_null()
    )
    _send([_copy(SAMPLES / "derived/kermany-normal-1.dcm", tmp_path, "TWO", age="003Y")], listener)
    wait_until_final(db, 2)
    two = [p for p in _predictions(db) if p.acc == "TWO"]
    assert [(p.model_version, p.model_role, p.triage) for p in two] == [
        ("2.0.0-site", "active", True)
    ]
    assert _by_accession(db)["TWO"][1].flagged  # its calibration flags anything
    states = {m.version: m.state for m in registry.list_models(db)}
    assert states == {
        shipped.version: registry.ModelState.RETIRED,
        "2.0.0-site": registry.ModelState.ACTIVE,
    }

    # rollback restores the previous version, again without a restart
    models_cli.model_rollback(db, _args(), stdout=_null())
    assert registry.active_model(db).version == shipped.version  # type: ignore[union-attr]
    _send(
        [_copy(SAMPLES / "derived/kermany-normal-1.dcm", tmp_path, "THREE", age="003Y")], listener
    )
    wait_until_final(db, 3)
    three = [p for p in _predictions(db) if p.acc == "THREE"]
    assert [(p.model_version, p.model_role) for p in three] == [(shipped.version, "active")]
    assert not _by_accession(db)["THREE"][1].flagged
    with db.begin() as conn:
        actions = conn.execute(
            text(
                "SELECT action, target, actor FROM audit_log WHERE action LIKE 'model_%' "
                "ORDER BY id"
            )
        ).all()
    assert [(a.action, a.target) for a in actions][-4:] == [
        ("model_register", "2.0.0-site"),
        ("model_shadow", "2.0.0-site"),
        ("model_activate", "2.0.0-site"),
        ("model_rollback", shipped.version),
    ]
    assert {a.actor for a in actions[-4:]} == {"cli:test"}


def test_the_registry_refuses_a_second_active_model_and_bad_changes(
    db: Engine, tmp_path: Path
) -> None:
    shipped = ensure_configured_model(db)
    with pytest.raises(registry.RegistryError, match="only model ever activated"):
        registry.rollback(db, ACTOR)
    with pytest.raises(registry.RegistryError, match="already registered"):
        models_cli.model_register(
            db, _args(dir=WEIGHTS_DIR, calibration=None, version=None, reference=None)
        )
    with pytest.raises(registry.RegistryError, match="is the active model"):
        registry.shadow(db, shipped.version, ACTOR)
    with pytest.raises(registry.RegistryError, match="no model version 'nope'"):
        registry.activate(db, "nope", ACTOR)
    folder, _ = _second_model(tmp_path, "3.0.0")
    other = json.loads((WEIGHTS_DIR / "calibration.json").read_text())
    other["model_sha256"] = "b" * 64
    (tmp_path / "other-cal.json").write_text(json.dumps(other))
    from cxr_common.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="is for model bbbbbbbbbbbb"):
        models_cli.model_register(
            db,
            _args(
                dir=folder, calibration=tmp_path / "other-cal.json", version=None, reference=None
            ),
        )
    with pytest.raises(IntegrityError, match="uq_models_one_active"), db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (version, name, sha256, uri, calibration_uri, "
                "calibration_version, state, registered_by) VALUES "
                "('x', 'x', 'x', 'x', 'x', 'x', 'active', 'x')"
            )
        )


def _validation(tmp_path: Path, name: str, positives: int, tp: int, **over: Any) -> Path:
    from training.validate import clopper_pearson

    contract = json.loads((WEIGHTS_DIR / "model.json").read_text())
    cal = json.loads((WEIGHTS_DIR / "calibration.json").read_text())
    lo, hi = clopper_pearson(tp, positives)
    rec: dict[str, Any] = {
        "schema": "cxr-triage/validation/1",
        "model": {"sha256": contract["sha256"], "version": contract["version"]},
        "calibration": {"version": cal["version"]},
        "targets": {"sensitivity": 0.95, "min_positives": 50, "confidence": 0.95},
        "data": {"hash": "d" * 64},
        "strata": [
            {
                "dimension": "age_band",
                "value": "18-64",
                "key": "age_band=18-64",
                "positives": positives,
                "sensitivity_ci": [lo, hi],
            },
        ],
    }
    rec.update(over)
    path = tmp_path / name
    path.write_text(json.dumps(rec))
    return path


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS:UserWarning")  # RSNA's age '54'
def test_population_enable_refuses_a_failing_stratum_and_widens_for_a_passing_one(
    db: Engine, tmp_path: Path
) -> None:
    from cxr_imaging.age import derive_age
    from cxr_model.population import assess_population
    from worker.registry import ServedModels

    ensure_configured_model(db)
    failing = _validation(tmp_path, "fail.json", positives=80, tp=74)  # lower bound ~0.84
    with pytest.raises(registry.RegistryError, match="sensitivity lower bound 0.8"):
        models_cli.population_enable(
            db, _args(stratum="age_band=18-64", validation=failing, targets="")
        )
    other = _validation(tmp_path, "other.json", 150, 150, model={"sha256": "c" * 64})
    with pytest.raises(registry.RegistryError, match="not the active model"):
        models_cli.population_enable(
            db, _args(stratum="age_band=18-64", validation=other, targets="")
        )
    assert registry.list_strata(db) == []

    passing = _validation(tmp_path, "pass.json", positives=150, tp=150)
    models_cli.population_enable(
        db, _args(stratum="age_band=18-64", validation=passing, targets=""), stdout=_null()
    )
    (row,) = registry.list_strata(db)
    assert (row.stratum, row.enabled, row.positives, row.changed_by) == (
        "age_band=18-64",
        True,
        150,
        "cli:test",
    )
    adult = pydicom.dcmread(SAMPLES / "rsna-normal-1.dcm", stop_before_pixels=True)
    served = ServedModels(db, device="cpu").current()  # what a worker serves now
    assert served.active.population is not None
    assessed = assess_population(adult, served.active.population)
    assert assessed.triage
    assert assessed.population.value == "in_scope"
    assert "1–5 y, 18–64 y" in assessed.reason
    assert derive_age(adult).years == 54

    models_cli.population_disable(db, _args(stratum="age_band=18-64"), stdout=_null())
    served = ServedModels(db, device="cpu").current()
    assert not assess_population(adult, served.active.population).triage
    with db.begin() as conn:
        audit_rows = conn.execute(
            text(
                "SELECT action, target, actor, detail FROM audit_log "
                "WHERE action LIKE 'population_%' ORDER BY id"
            )
        ).all()
    assert [(a.action, a.target, a.actor) for a in audit_rows][-2:] == [
        ("population_enable", "age_band=18-64", "cli:test"),
        ("population_disable", "age_band=18-64", "cli:test"),
    ]
    assert audit_rows[-2].detail["positives"] == 150


def test_drift_is_measured_per_day_and_warned_on_the_worklist_page(db: Engine) -> None:
    from cxr_db.drift import current_psi, daily_drift

    shipped = ensure_configured_model(db)  # carries its calibration-sample reference
    for i in range(40):  # a day of near-zero scores: far from the calibration sample
        iid = record(db, f"1.2.826.0.1.9.{i}", f"1.2.826.0.1.9.{i}.1", f"D{i:03d}")
        repo.record_prediction(
            db,
            iid,
            prediction(0.001, threshold=0.28, version=shipped.version),
            population=repo.PopulationNote("in_scope", "age 3 y"),
        )
    report = daily_drift(db, days=2)
    assert report.problem is None
    yesterday, today = report.windows
    assert today.day == datetime.now(UTC).date()
    assert (today.n_scored, today.n_final) == (40, 40)
    assert today.score_psi is not None
    assert today.score_psi > 0.2
    assert today.eligibility_psi == pytest.approx(0.0)
    assert today.population_psi == pytest.approx(0.0)
    assert today.alerts() == ["score"]
    assert yesterday.n_scored == 0
    assert yesterday.score_psi is None  # too few to say
    assert current_psi(db)["score"] == pytest.approx(today.score_psi)
    assert (
        daily_drift(db, days=1, now=datetime.now(UTC) + timedelta(days=3)).windows[0].n_scored == 0
    )
    reset_accounts(db)
    add_user(db, "ann")
    with serve(db, web_config()) as base, httpx.Client(base_url=base, timeout=30) as http:
        assert sign_in(http, "ann").status_code == 303
        page = http.get("/").text
    assert "Drift warning: the score distribution" in page


def _null() -> Any:
    import io

    return io.StringIO()
