"""Recalibration before promotion (issue 21, part 3) on real Postgres: ``model activate``
refuses a version never active here whose calibration was not fitted on the site's own
answers, unless ``--accept-shipped-calibration`` (audited); ``calibrate --from-shadow``
fits one from the version's shadow predictions and the radiologists' answers, registers it
with its sample size, and then the version activates, with the score interval served."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, text

from cxr_common.errors import ConfigurationError
from cxr_db.audit.tables import AuditAction
from cxr_db.instances import writes as repo
from cxr_db.reading import store as reading
from cxr_db.reading.tables import Finding
from cxr_db.registry import store as registry
from cxr_model import WEIGHTS_DIR, load_calibration
from cxr_registry import ensure_configured_model
from cxr_triage import models_cli
from tests.db_rows import prediction, record
from tests.integration.reading_rows import add_user, audit_after, audit_mark, clean
from training.cli import calibrate_from_shadow
from worker.registry import ServedModels

pytestmark = pytest.mark.integration

NEW = "2.0.0-candidate"


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    def clear() -> None:
        clean(engine)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE models, population_strata RESTART IDENTITY"))

    clear()
    yield engine
    clear()


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(actor="cli:test", **kw)


def _calibrate_args(out: Path, version: str = NEW) -> argparse.Namespace:
    return _args(
        from_shadow=version,
        out=out,
        min_studies=50,
        min_per_class=10,
        target_sensitivity=0.95,
        confidence=0.95,
        no_bias=False,
    )


def _candidate(db: Engine, tmp_path: Path) -> registry.ModelEntry:
    """The shipped weights under a new version with the shipped calibration, in shadow."""
    folder = tmp_path / NEW
    shutil.copytree(WEIGHTS_DIR, folder)
    contract = json.loads((folder / "model.json").read_text())
    contract["version"] = NEW
    (folder / "model.json").write_text(json.dumps(contract))
    models_cli.model_register(
        db, _args(dir=folder, calibration=None, version=None, reference=None), stdout=io.StringIO()
    )
    models_cli.model_shadow(db, _args(version=NEW), stdout=io.StringIO())
    entry = registry.get_model(db, NEW)
    assert entry is not None
    return entry


def _answered_studies(
    db: Engine, reader: reading.Reader, first: int, logits: list[float], finding: Finding
) -> None:
    """Studies scored by the active model and, in shadow, by NEW (logit given), answered."""
    for n, z in enumerate(logits, first):
        study = f"1.2.826.0.1.3680043.10.21.{n}"
        instance = record(db, study, f"{study}.1")
        repo.record_shadow_prediction(db, instance, replace(prediction(0.5, version=NEW), logit=z))
        repo.record_prediction(db, instance, prediction(0.4, version="shipped"))
        reading.record_answer(db, study, reader, finding)


def _model_audit(db: Engine, mark: int) -> list[tuple[str, str | None, dict[str, object]]]:
    return [
        (e.action, e.target, e.detail)
        for e in audit_after(db, mark)
        if e.action.startswith("model_")
    ]


def test_activation_needs_a_site_calibration_or_the_audited_override(
    db: Engine, tmp_path: Path
) -> None:
    shipped = ensure_configured_model(db)  # what cxr-triage migrate does: no flag needed
    assert shipped.state is registry.ModelState.ACTIVE
    assert shipped.calibration_source is registry.CalibrationSource.SHIPPED
    _candidate(db, tmp_path)
    mark = audit_mark(db)
    with pytest.raises(registry.RegistryError, match=f"calibrate --from-shadow {NEW}"):
        models_cli.model_activate(db, _args(version=NEW), stdout=io.StringIO())
    assert registry.active_model(db).version == shipped.version  # type: ignore[union-attr]
    assert _model_audit(db, mark) == []  # a refusal changes nothing

    out = io.StringIO()
    models_cli.model_activate(db, _args(version=NEW, accept_shipped_calibration=True), stdout=out)
    assert registry.active_model(db).version == NEW  # type: ignore[union-attr]
    assert "not fitted on this site's answers (--accept-shipped-calibration" in out.getvalue()
    ((action, target, detail),) = _model_audit(db, mark)
    assert (action, target) == (AuditAction.MODEL_ACTIVATE.value, NEW)
    assert detail["accept_shipped_calibration"] is True
    assert detail["calibration_source"] == "shipped"
    assert detail["calibration_version"] == shipped.calibration_version
    assert str(detail["image_check"]).startswith("mahalanobis; pooled + blocks.3")
    assert detail["accept_no_image_check"] is False

    # the shipped model was active here before: rollback and re-activation need no flag
    models_cli.model_rollback(db, _args(), stdout=io.StringIO())
    models_cli.model_activate(db, _args(version=NEW, accept_shipped_calibration=True))
    models_cli.model_activate(db, _args(version=shipped.version), stdout=io.StringIO())
    assert registry.active_model(db).version == shipped.version  # type: ignore[union-attr]


def test_activation_needs_an_image_check_for_the_weights_or_the_audited_override(
    db: Engine, tmp_path: Path
) -> None:
    """A model folder without ``ood.json`` would triage an adult film whose age was blanked:
    its first activation is refused unless ``--accept-no-image-check`` (audited)."""
    shipped = ensure_configured_model(db)
    folder = tmp_path / NEW
    shutil.copytree(WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("ood.*"))
    contract = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**contract, "version": NEW}))
    out = io.StringIO()
    models_cli.model_register(
        db, _args(dir=folder, calibration=None, version=None, reference=None), stdout=out
    )
    assert f"image check: none (no ood.json for these weights in {folder})" in out.getvalue()
    mark = audit_mark(db)
    accept = {"accept_shipped_calibration": True}
    with pytest.raises(registry.RegistryError, match="no image-based population check") as info:
        models_cli.model_activate(db, _args(version=NEW, **accept), stdout=io.StringIO())
    assert f"cxr-triage ood-fit --model {folder} " in str(info.value)
    assert "--accept-no-image-check" in str(info.value)
    assert registry.active_model(db).version == shipped.version  # type: ignore[union-attr]
    assert _model_audit(db, mark) == []

    # statistics fitted for other weights are refused, never taken for a check
    meta = json.loads((WEIGHTS_DIR / "ood.json").read_text())
    (folder / "ood.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    shutil.copy(WEIGHTS_DIR / "ood.npz", folder)
    with pytest.raises(ConfigurationError, match=f"{folder}: .*0000000000"):
        models_cli.model_activate(db, _args(version=NEW, **accept), stdout=io.StringIO())
    assert _model_audit(db, mark) == []

    (folder / "ood.json").unlink()
    out = io.StringIO()
    models_cli.model_activate(
        db, _args(version=NEW, accept_no_image_check=True, **accept), stdout=out
    )
    assert registry.active_model(db).version == NEW  # type: ignore[union-attr]
    assert "no image-based population check (--accept-no-image-check, audited)" in out.getvalue()
    ((action, target, detail),) = _model_audit(db, mark)
    assert (action, target) == (AuditAction.MODEL_ACTIVATE.value, NEW)
    assert detail["image_check"] is None
    assert detail["accept_no_image_check"] is True


def test_calibrate_from_shadow_fits_on_the_answers_then_activation_succeeds(
    db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_configured_model(db)
    candidate = _candidate(db, tmp_path)
    reader = reading.Reader.from_user(add_user(db, "rad1"))
    rng = np.random.default_rng(21)
    out_path = tmp_path / "site" / "calibration.json"

    # too few answered studies: refused, nothing registered
    _answered_studies(db, reader, 0, list(rng.normal(6.0, 2.0, 8)), Finding.PNEUMONIA)
    _answered_studies(db, reader, 100, list(rng.normal(1.0, 2.0, 8)), Finding.NO_PNEUMONIA)
    assert calibrate_from_shadow(db, _calibrate_args(out_path), stdout=io.StringIO()) == 2
    assert "16 answered studies with a shadow score" in capsys.readouterr().err
    assert not out_path.exists()
    assert registry.get_model(db, NEW).calibration_source.value == "shipped"  # type: ignore[union-attr]

    # enough, with studies that must not count: 'other', unanswered, another version's
    _answered_studies(db, reader, 8, list(rng.normal(6.0, 2.0, 32)), Finding.PNEUMONIA)
    _answered_studies(db, reader, 108, list(rng.normal(1.0, 2.0, 22)), Finding.NO_PNEUMONIA)
    _answered_studies(db, reader, 500, [9.0, 9.0], Finding.OTHER)
    unanswered = record(db, "1.2.826.0.1.3680043.10.21.900", "1.2.826.0.1.3680043.10.21.900.1")
    repo.record_shadow_prediction(db, unanswered, replace(prediction(0.5, version=NEW), logit=-9))
    sample = registry.shadow_sample(db, NEW)
    assert (sample.n, sample.positives, sample.studies_other) == (70, 40, 2)

    mark = audit_mark(db)
    printed = io.StringIO()
    assert calibrate_from_shadow(db, _calibrate_args(out_path), stdout=printed) == 0
    assert "on 70 answered studies (40 pneumonia, 30 no pneumonia" in printed.getvalue()
    entry = registry.get_model(db, NEW)
    assert entry is not None
    assert entry.calibration_source is registry.CalibrationSource.SITE
    assert entry.calibration_n == 70
    assert entry.calibration_uri == str(out_path.resolve())
    assert entry.calibration_version.startswith(f"{NEW}-shadow-")
    cal = load_calibration(out_path, model_sha256=candidate.sha256)
    assert cal.version == entry.calibration_version
    assert cal.fitted_on["n"] == 70
    assert cal.interval is not None
    assert cal.temperature != pytest.approx(3.1896661863849096)  # refitted, not the shipped
    ((action, target, detail),) = _model_audit(db, mark)
    assert (action, target) == (AuditAction.MODEL_CALIBRATE.value, NEW)
    assert (detail["studies"], detail["positives"]) == (70, 40)
    assert detail["calibration_version"] == entry.calibration_version

    # now it activates without the override, and workers serve the site calibration
    models_cli.model_activate(db, _args(version=NEW), stdout=io.StringIO())
    _, (action, target, detail) = _model_audit(db, mark)
    assert (action, target) == (AuditAction.MODEL_ACTIVATE.value, NEW)
    assert detail["accept_shipped_calibration"] is False
    assert detail["calibration_source"] == "site"
    served = ServedModels(db, device="cpu").current().active
    assert served.entry.version == NEW
    assert served.calibration.version == entry.calibration_version
    score = served.calibration.score(float(np.mean(sample.logits)))
    assert score.lower is not None
    assert score.upper is not None
    assert score.lower < score.probability < score.upper


def test_calibrate_from_shadow_refuses_one_class_and_an_unknown_version(
    db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_configured_model(db)
    _candidate(db, tmp_path)
    reader = reading.Reader.from_user(add_user(db, "rad1"))
    _answered_studies(db, reader, 0, [float(z) for z in range(60)], Finding.NO_PNEUMONIA)
    out_path = tmp_path / "calibration.json"
    assert calibrate_from_shadow(db, _calibrate_args(out_path), stdout=io.StringIO()) == 2
    assert "are all no pneumonia" in capsys.readouterr().err
    with pytest.raises(registry.RegistryError, match="no model version 'nope'"):
        calibrate_from_shadow(db, _calibrate_args(out_path, "nope"))
    with pytest.raises(registry.RegistryError, match="not fitted for it on this site"):
        registry.activate(db, NEW, models_cli.actor_of(_args()))
