"""The model registry's state transitions (``cxr_db.registry.store``): every refused move
names its reason, every other one moves the model and leaves one audit row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from cxr_db.audit.store import Actor
from cxr_db.audit.tables import ActorKind
from cxr_db.registry import store as registry
from cxr_db.registry.store import NewModel, RegistryError
from cxr_db.registry.tables import ModelState

pytestmark = pytest.mark.integration

ACTOR = Actor("cli:test", ActorKind.CLI)


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    def clear() -> None:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE models, population_strata RESTART IDENTITY"))

    clear()
    yield engine
    clear()


def _register(db: Engine, version: str, *, activate_if_none: bool = False) -> None:
    model = NewModel(version, "m", version[0] * 64, f"file:///{version}", "c", "cal-1")
    registry.register(db, model, ACTOR, activate_if_none=activate_if_none)


def _state(db: Engine, version: str) -> ModelState:
    entry = registry.get_model(db, version)
    assert entry is not None
    return entry.state


def _last_audit_id(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_log")).scalar_one())


def _actions(db: Engine, version: str, after_id: int) -> list[tuple[str, str]]:
    """The audited moves of ``version`` since ``after_id`` (the audit log is append-only,
    so earlier tests' rows stay)."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, detail->>'from_state' FROM audit_log WHERE target = :v "
                "AND action <> 'model_register' AND id > :after ORDER BY id"
            ),
            {"v": version, "after": after_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_refused_moves_name_their_reason_and_change_nothing(db: Engine) -> None:
    start = _last_audit_id(db)
    _register(db, "1.0.0", activate_if_none=True)
    _register(db, "2.0.0")
    registry.shadow(db, "2.0.0", ACTOR)
    _register(db, "3.0.0")
    registry.retire(db, "3.0.0", ACTOR)
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
            move(db, version, ACTOR)
        assert str(caught.value).startswith(reason), (move.__name__, version)
    assert [_state(db, v) for v in ("1.0.0", "2.0.0", "3.0.0")] == [
        ModelState.ACTIVE,
        ModelState.SHADOW,
        ModelState.RETIRED,
    ]
    assert _actions(db, "1.0.0", start) == []


def test_allowed_moves_change_the_state_and_audit_the_state_they_left(db: Engine) -> None:
    start = _last_audit_id(db)
    _register(db, "1.0.0", activate_if_none=True)
    _register(db, "2.0.0")
    registry.retire(db, "2.0.0", ACTOR)  # registered → retired
    registry.shadow(db, "2.0.0", ACTOR)  # retired → shadow
    assert registry.activate(db, "2.0.0", ACTOR) == "1.0.0"  # shadow → active
    assert _state(db, "1.0.0") is ModelState.RETIRED
    registry.shadow(db, "1.0.0", ACTOR)  # retired → shadow
    registry.retire(db, "1.0.0", ACTOR)  # shadow → retired
    assert registry.activate(db, "1.0.0", ACTOR) == "2.0.0"  # retired → active
    assert _actions(db, "2.0.0", start) == [
        ("model_retire", "registered"),
        ("model_shadow", "retired"),
        ("model_activate", "shadow"),
    ]
    assert _actions(db, "1.0.0", start) == [
        ("model_shadow", "retired"),
        ("model_retire", "shadow"),
        ("model_activate", "retired"),
    ]
