"""The model registry's state transitions (``cxr_db.registry.store``): every refused move
names its reason, every other one moves the model and leaves one audit row."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from cxr_db.registry import store as registry
from cxr_db.registry.store import NewModel, RegistryError
from cxr_db.registry.tables import ModelState
from tests.integration.test_population_models import ACTOR, db  # noqa: F401

# ``db``: a clean registry, the fixture the registry's end-to-end tests use
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def _register(engine: Engine, version: str, *, activate_if_none: bool = False) -> None:
    model = NewModel(version, "m", version[0] * 64, f"file:///{version}", "c", "cal-1")
    registry.register(engine, model, ACTOR, activate_if_none=activate_if_none)


def _state(engine: Engine, version: str) -> ModelState:
    entry = registry.get_model(engine, version)
    assert entry is not None
    return entry.state


def _last_audit_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_log")).scalar_one())


def _actions(engine: Engine, version: str, after_id: int) -> list[tuple[str, str]]:
    """The audited moves of ``version`` since ``after_id`` (the audit log is append-only,
    so earlier tests' rows stay)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, detail->>'from_state' FROM audit_log WHERE target = :v "
                "AND action <> 'model_register' AND id > :after ORDER BY id"
            ),
            {"v": version, "after": after_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_refused_moves_name_their_reason_and_change_nothing(engine: Engine) -> None:
    start = _last_audit_id(engine)
    _register(engine, "1.0.0", activate_if_none=True)
    _register(engine, "2.0.0")
    registry.shadow(engine, "2.0.0", ACTOR)
    _register(engine, "3.0.0")
    registry.retire(engine, "3.0.0", ACTOR)
    refused = [
        (registry.activate, "1.0.0", "model 1.0.0 is already active"),
        (
            registry.shadow,
            "1.0.0",
            "model 1.0.0 is the active model; activate another (or rollback) first",
        ),
        (
            registry.retire,
            "1.0.0",
            "model 1.0.0 is the active model; activate another (or rollback) instead",
        ),
        (registry.shadow, "2.0.0", "model 2.0.0 is already in shadow"),
        (registry.retire, "3.0.0", "model 3.0.0 is already retired"),
        (registry.activate, "9.9.9", "no model version '9.9.9' is registered"),
    ]
    for move, version, reason in refused:
        with pytest.raises(RegistryError) as caught:
            move(engine, version, ACTOR)
        assert str(caught.value).startswith(reason), (move.__name__, version)
    assert [_state(engine, v) for v in ("1.0.0", "2.0.0", "3.0.0")] == [
        ModelState.ACTIVE,
        ModelState.SHADOW,
        ModelState.RETIRED,
    ]
    assert _actions(engine, "1.0.0", start) == []


def test_allowed_moves_change_the_state_and_audit_the_state_they_left(engine: Engine) -> None:
    start = _last_audit_id(engine)
    _register(engine, "1.0.0", activate_if_none=True)
    _register(engine, "2.0.0")
    registry.retire(engine, "2.0.0", ACTOR)  # registered → retired
    registry.shadow(engine, "2.0.0", ACTOR)  # retired → shadow
    assert (
        registry.activate(
            engine, "2.0.0", ACTOR, accept_shipped_calibration=True, image_check="test check"
        )
        == "1.0.0"
    )  # shadow → active
    assert _state(engine, "1.0.0") is ModelState.RETIRED
    registry.shadow(engine, "1.0.0", ACTOR)  # retired → shadow
    registry.retire(engine, "1.0.0", ACTOR)  # shadow → retired
    assert registry.activate(engine, "1.0.0", ACTOR) == "2.0.0"  # retired → active
    assert _actions(engine, "2.0.0", start) == [
        ("model_retire", "registered"),
        ("model_shadow", "retired"),
        ("model_activate", "shadow"),
    ]
    assert _actions(engine, "1.0.0", start) == [
        ("model_shadow", "retired"),
        ("model_retire", "shadow"),
        ("model_activate", "retired"),
    ]
