"""The model registry and the strata a site enabled (revision 0006; tables in
``cxr_db.registry.tables``).

``models`` holds every registered model by version: its name, weights sha256, folder,
calibration (path and version) and state::

    registered ──shadow──▶ shadow ──activate──▶ active ──(another is activated)──▶ retired
         └──────────────activate───────────────────▲            rollback: the one
                                                                 activated before it

Exactly one model is ``active`` (a partial unique index allows no second; the first
registration on an empty registry activates itself); ``shadow`` models score the same
instances in the same batch, their predictions stored under their version with
``model_role = 'shadow'`` and never used for priority. ``rollback`` activates the model whose
activation is the latest before the current one's. ``activate``, ``shadow`` and ``retire``
move a model from any state unless ``_REFUSED`` names the (from, to) pair, with the reason
the operator reads.

Recalibration before promotion (revision 0010): a new version can shift the score scale, so
``activate`` refuses a model whose calibration was not fitted for it on this site's own
answers (``calibration_source = 'site'``: ``set_site_calibration``, what ``cxr-triage
calibrate --from-shadow`` stores from ``shadow_sample``, the model's shadow scores against
the radiologists' answers), unless the caller accepts the shipped calibration
(``accept_shipped_calibration``, recorded in the audit row). Exempt: the first registration
on an empty registry (the validated shipped model activates itself) and a model that was
active here before (rollback, or activating it again).

The image check before promotion: without its distribution check (``ood.json`` next to the
weights, fitted for them) a model triages any film whose header passes, an adult's without
an age among them. ``activate`` therefore takes the check the caller read from the model's
folder (``image_check``, a line naming it, or None) and refuses a model never active here
that has none, unless the caller accepts that (``accept_no_image_check``, audited). The
caller reads the folder: nothing here reads model files.

``population_strata`` holds the strata a site enabled from its own validation record, each
tied to the model sha256 and calibration version it was validated for: the worker widens the
active model's population only with the strata validated for that very model and
calibration. Every change appends an audit row in the same transaction (``cxr_db.audit``).

Nothing here imports the model code; ``worker.registry`` reads model folders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from cxr_common.errors import CxrTriageError
from cxr_common.population import Stratum
from cxr_db.audit import store as audit
from cxr_db.audit.tables import AuditAction
from cxr_db.instances.statuses import InstanceStatus
from cxr_db.instances.tables import Instance, Prediction
from cxr_db.reading.tables import Answer, Finding, ReadState, StudyRead
from cxr_db.registry.tables import (
    CalibrationSource,
    ModelRole,
    ModelState,
    PopulationStratumRow,
    RegisteredModel,
)

__all__ = [
    "CalibrationSource",
    "ModelEntry",
    "ModelRole",
    "ModelState",
    "NewModel",
    "RegistryError",
    "ServingState",
    "StratumEvidence",
    "StratumRow",
    "activate",
    "active_model",
    "enable_stratum",
    "disable_stratum",
    "get_model",
    "list_models",
    "list_strata",
    "register",
    "retire",
    "rollback",
    "serving_model_labels",
    "serving_state",
    "set_site_calibration",
    "shadow",
    "shadow_sample",
]


class RegistryError(CxrTriageError):
    """A registry or population change was refused (the message says why)."""


@dataclass(frozen=True)
class NewModel:
    """What ``register`` needs: read from a model folder by ``worker.registry``."""

    version: str
    name: str
    sha256: str
    uri: str
    calibration_uri: str
    calibration_version: str
    reference: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelEntry:
    version: str
    name: str
    sha256: str
    uri: str
    calibration_uri: str
    calibration_version: str
    state: ModelState
    registered_at: datetime
    registered_by: str
    activated_at: datetime | None
    changed_at: datetime
    reference: dict[str, Any] | None
    calibration_source: CalibrationSource = CalibrationSource.SHIPPED
    calibration_n: int | None = None
    """Answered studies the site calibration was fitted on (None: shipped)."""

    def as_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "name": self.name,
            "sha256": self.sha256,
            "uri": self.uri,
            "calibration_uri": self.calibration_uri,
            "calibration_version": self.calibration_version,
            "calibration_source": self.calibration_source.value,
            "calibration_n": self.calibration_n,
            "state": self.state.value,
            "registered_at": self.registered_at.isoformat(),
            "registered_by": self.registered_by,
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
            "drift_reference": self.reference is not None,
        }


@dataclass(frozen=True)
class StratumEvidence:
    """What the validation record showed for a stratum when it was enabled."""

    model_sha256: str
    calibration_version: str
    validation_sha256: str
    data_hash: str | None
    positives: int
    sensitivity_lower: float


@dataclass(frozen=True)
class StratumRow:
    stratum: str
    dimension: str
    value: str
    enabled: bool
    model_sha256: str
    calibration_version: str
    validation_sha256: str
    positives: int
    sensitivity_lower: float
    changed_by: str
    changed_at: datetime


@dataclass(frozen=True)
class ServingState:
    """What workers serve: the active and shadow models and the enabled strata. Workers
    compare it between batches and reload when it changed."""

    models: tuple[ModelEntry, ...]
    strata: tuple[StratumRow, ...]

    @property
    def active(self) -> ModelEntry | None:
        return next((m for m in self.models if m.state is ModelState.ACTIVE), None)

    @property
    def shadows(self) -> tuple[ModelEntry, ...]:
        return tuple(m for m in self.models if m.state is ModelState.SHADOW)

    def strata_for(self, model: ModelEntry) -> tuple[Stratum, ...]:
        """Enabled strata validated for ``model`` and its calibration."""
        return tuple(
            Stratum(s.dimension, s.value)
            for s in self.strata
            if s.enabled
            and s.model_sha256 == model.sha256
            and s.calibration_version == model.calibration_version
        )


def _entry(r: Row[Any]) -> ModelEntry:
    return ModelEntry(
        version=r.version,
        name=r.name,
        sha256=r.sha256,
        uri=r.uri,
        calibration_uri=r.calibration_uri,
        calibration_version=r.calibration_version,
        state=ModelState(r.state),
        registered_at=r.registered_at,
        registered_by=r.registered_by,
        activated_at=r.activated_at,
        changed_at=r.changed_at,
        reference=r.reference,
        calibration_source=CalibrationSource(r.calibration_source),
        calibration_n=r.calibration_n,
    )


def _stratum(r: Row[Any]) -> StratumRow:
    return StratumRow(
        stratum=r.stratum,
        dimension=r.dimension,
        value=r.value,
        enabled=r.enabled,
        model_sha256=r.model_sha256,
        calibration_version=r.calibration_version,
        validation_sha256=r.validation_sha256,
        positives=r.positives,
        sensitivity_lower=r.sensitivity_lower,
        changed_by=r.changed_by,
        changed_at=r.changed_at,
    )


_MODEL_COLUMNS = select(RegisteredModel.__table__)
_STRATUM_COLUMNS = select(PopulationStratumRow.__table__)


def list_models(engine: Engine) -> list[ModelEntry]:
    """Every registered model, newest registration first."""
    with engine.connect() as conn:
        rows = conn.execute(
            _MODEL_COLUMNS.order_by(RegisteredModel.registered_at.desc(), RegisteredModel.id.desc())
        ).all()
    return [_entry(r) for r in rows]


def get_model(engine: Engine, version: str) -> ModelEntry | None:
    with engine.connect() as conn:
        row = conn.execute(_MODEL_COLUMNS.where(RegisteredModel.version == version)).one_or_none()
    return None if row is None else _entry(row)


def active_model(engine: Engine) -> ModelEntry | None:
    with engine.connect() as conn:
        row = conn.execute(
            _MODEL_COLUMNS.where(RegisteredModel.state == ModelState.ACTIVE.value)
        ).one_or_none()
    return None if row is None else _entry(row)


def list_strata(engine: Engine) -> list[StratumRow]:
    with engine.connect() as conn:
        rows = conn.execute(_STRATUM_COLUMNS.order_by(PopulationStratumRow.stratum)).all()
    return [_stratum(r) for r in rows]


def serving_state(engine: Engine) -> ServingState:
    """The active and shadow models and the enabled strata: two small indexed reads."""
    with engine.connect() as conn:
        models = conn.execute(
            _MODEL_COLUMNS.where(
                RegisteredModel.state.in_((ModelState.ACTIVE.value, ModelState.SHADOW.value))
            ).order_by(RegisteredModel.version)
        ).all()
        strata = conn.execute(
            _STRATUM_COLUMNS.where(PopulationStratumRow.enabled.is_(True)).order_by(
                PopulationStratumRow.stratum
            )
        ).all()
    return ServingState(tuple(_entry(r) for r in models), tuple(_stratum(r) for r in strata))


def serving_model_labels(conn: Connection) -> tuple[tuple[str, str, str, str], ...]:
    """(name, version, calibration version, state) of the active and shadow models, by
    state then version, read on the caller's connection (a metrics scrape's snapshot)."""
    rows = conn.execute(
        select(
            RegisteredModel.name,
            RegisteredModel.version,
            RegisteredModel.calibration_version,
            RegisteredModel.state,
        )
        .where(RegisteredModel.state.in_((ModelState.ACTIVE, ModelState.SHADOW)))
        .order_by(RegisteredModel.state, RegisteredModel.version)
    ).all()
    return tuple((r.name, r.version, r.calibration_version, str(r.state)) for r in rows)


def _lock(conn: Connection) -> None:
    """Serialise registry changes (two operators activating at once)."""
    conn.execute(text("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE"))


def _audit(
    conn: Connection,
    action: AuditAction,
    actor: audit.Actor,
    target: str,
    detail: dict[str, audit.Scalar],
) -> None:
    audit.append(conn, audit.AuditEvent(action, actor, target, detail))


def _state_of(conn: Connection, version: str) -> ModelEntry:
    row = conn.execute(_MODEL_COLUMNS.where(RegisteredModel.version == version)).one_or_none()
    if row is None:
        raise RegistryError(f"no model version {version!r} is registered (cxr-triage model list)")
    return _entry(row)


def register(
    engine: Engine, model: NewModel, actor: audit.Actor, *, activate_if_none: bool = False
) -> ModelEntry:
    """Register ``model`` (state ``registered``; ``active`` when ``activate_if_none`` and no
    model is active). A version is registered once: the same version again is refused."""
    with engine.begin() as conn:
        _lock(conn)
        if conn.execute(
            select(RegisteredModel.id).where(RegisteredModel.version == model.version)
        ).first():
            raise RegistryError(
                f"model version {model.version!r} is already registered; give another "
                "version (--version)"
            )
        has_active = conn.execute(
            select(RegisteredModel.id).where(RegisteredModel.state == ModelState.ACTIVE.value)
        ).first()
        state = ModelState.ACTIVE if activate_if_none and not has_active else ModelState.REGISTERED
        conn.execute(
            insert(RegisteredModel).values(
                version=model.version,
                name=model.name,
                sha256=model.sha256,
                uri=model.uri,
                calibration_uri=model.calibration_uri,
                calibration_version=model.calibration_version,
                state=state.value,
                registered_by=actor.name[:128],
                activated_at=func.now() if state is ModelState.ACTIVE else None,
                reference=model.reference,
            )
        )
        _audit(
            conn,
            AuditAction.MODEL_REGISTER,
            actor,
            model.version,
            {
                "sha256": model.sha256,
                "calibration_version": model.calibration_version,
                "state": state.value,
                "uri": model.uri,
            },
        )
        return _state_of(conn, model.version)


def _set_state(conn: Connection, version: str, state: ModelState) -> None:
    values: dict[str, Any] = {"state": state.value, "changed_at": func.now()}
    if state is ModelState.ACTIVE:
        values["activated_at"] = func.now()
    conn.execute(update(RegisteredModel).where(RegisteredModel.version == version).values(values))


_REFUSED: Mapping[tuple[ModelState, ModelState], str] = {
    (ModelState.ACTIVE, ModelState.ACTIVE): "model {version} is already active",
    (ModelState.ACTIVE, ModelState.SHADOW): (
        "model {version} is the active model; activate another (or rollback) first"
    ),
    (ModelState.SHADOW, ModelState.SHADOW): "model {version} is already in shadow",
    (ModelState.ACTIVE, ModelState.RETIRED): (
        "model {version} is the active model; activate another (or rollback) instead"
    ),
    (ModelState.RETIRED, ModelState.RETIRED): "model {version} is already retired",
}
"""The one table of refused transitions (from, to) → why; every other one is allowed. The
active model leaves ``active`` only when another is activated (or by rollback)."""

_AUDIT_ACTION: Mapping[ModelState, AuditAction] = {
    ModelState.ACTIVE: AuditAction.MODEL_ACTIVATE,
    ModelState.SHADOW: AuditAction.MODEL_SHADOW,
    ModelState.RETIRED: AuditAction.MODEL_RETIRE,
}


def _transition(conn: Connection, version: str, to: ModelState) -> ModelEntry:
    """The registered ``version``, checked against ``_REFUSED`` for a move to ``to``."""
    target = _state_of(conn, version)
    refused = _REFUSED.get((target.state, to))
    if refused is not None:
        raise RegistryError(refused.format(version=version))
    return target


def _activate(conn: Connection, target: ModelEntry) -> str | None:
    """Make ``target`` the active model; the one it replaces is retired. Returns that one."""
    current = conn.execute(
        select(RegisteredModel.version).where(RegisteredModel.state == ModelState.ACTIVE.value)
    ).scalar_one_or_none()
    if current is not None:
        _set_state(conn, current, ModelState.RETIRED)
    _set_state(conn, target.version, ModelState.ACTIVE)
    return current


def image_check_command(uri: str) -> str:
    """The command that fits the image check of the model in folder ``uri`` (what a refusal
    and ``model register`` tell the operator to run)."""
    return (
        f"cxr-triage ood-fit --model {uri} --data LABELS.csv --fit-filter split=train "
        "--threshold-filter split=cal"
    )


def activate(
    engine: Engine,
    version: str,
    actor: audit.Actor,
    *,
    accept_shipped_calibration: bool = False,
    image_check: str | None = None,
    accept_no_image_check: bool = False,
) -> str | None:
    """Activate ``version``; returns the version it replaced (now retired), if any.

    For a model never active here, refused when its calibration was not fitted for it on
    this site's answers, unless ``accept_shipped_calibration``, and when its folder has no
    image check (``image_check`` None, as the caller read it), unless
    ``accept_no_image_check``; both overrides are written to the audit row."""
    try:
        with engine.begin() as conn:
            _lock(conn)
            target = _transition(conn, version, ModelState.ACTIVE)
            site_fitted = target.calibration_source is CalibrationSource.SITE
            first_time = target.activated_at is None
            if not site_fitted and first_time and not accept_shipped_calibration:
                raise RegistryError(
                    f"model {version}'s calibration {target.calibration_version} was not fitted "
                    "for it on this site's answers, and a new version can shift the score "
                    f"scale: run it in shadow (cxr-triage model shadow {version}), let the "
                    f"radiologists answer, fit it with cxr-triage calibrate --from-shadow "
                    f"{version} --out FILE, then activate it; or activate it with "
                    "--accept-shipped-calibration (audited)"
                )
            if image_check is None and first_time and not accept_no_image_check:
                raise RegistryError(
                    f"model {version} has no image-based population check fitted for its "
                    f"weights (no ood.json in {target.uri}): it would triage any film whose "
                    "header passes, an adult's without an age among them. Fit one on the "
                    "images it was trained on and a held-out in-scope sample "
                    f"({image_check_command(target.uri)}), then activate it; or activate it "
                    "with --accept-no-image-check (audited)"
                )
            previous = _activate(conn, target)
            _audit(
                conn,
                _AUDIT_ACTION[ModelState.ACTIVE],
                actor,
                version,
                {
                    "previous": previous,
                    "sha256": target.sha256,
                    "from_state": target.state.value,
                    "calibration_version": target.calibration_version,
                    "calibration_source": target.calibration_source.value,
                    "accept_shipped_calibration": accept_shipped_calibration and not site_fitted,
                    "image_check": image_check,
                    "accept_no_image_check": accept_no_image_check and image_check is None,
                },
            )
            return previous
    except IntegrityError as exc:  # a concurrent activation won the partial unique index
        raise RegistryError("another activation ran at the same time; try again") from exc


def _move(engine: Engine, version: str, to: ModelState, actor: audit.Actor) -> None:
    """Move ``version`` to ``to`` (shadow or retired) and audit it, in one transaction."""
    with engine.begin() as conn:
        _lock(conn)
        target = _transition(conn, version, to)
        _set_state(conn, version, to)
        _audit(
            conn,
            _AUDIT_ACTION[to],
            actor,
            version,
            {"sha256": target.sha256, "from_state": target.state.value},
        )


def shadow(engine: Engine, version: str, actor: audit.Actor) -> None:
    """Score with ``version`` in shadow (its predictions never set priority)."""
    _move(engine, version, ModelState.SHADOW, actor)


def retire(engine: Engine, version: str, actor: audit.Actor) -> None:
    """Stop scoring with a shadow (or registered) model; the active one cannot be retired."""
    _move(engine, version, ModelState.RETIRED, actor)


def rollback(engine: Engine, actor: audit.Actor) -> tuple[str, str]:
    """Activate the model that was active before the current one; returns (from, to)."""
    try:
        with engine.begin() as conn:
            _lock(conn)
            current = conn.execute(
                _MODEL_COLUMNS.where(RegisteredModel.state == ModelState.ACTIVE.value)
            ).one_or_none()
            if current is None:
                raise RegistryError("no model is active: nothing to roll back")
            previous = conn.execute(
                _MODEL_COLUMNS.where(
                    RegisteredModel.state != ModelState.ACTIVE.value,
                    RegisteredModel.activated_at.is_not(None),
                    RegisteredModel.activated_at <= current.activated_at,
                )
                .order_by(RegisteredModel.activated_at.desc(), RegisteredModel.id.desc())
                .limit(1)
            ).one_or_none()
            if previous is None:
                raise RegistryError(
                    f"model {current.version} is the only model ever activated: nothing to roll "
                    "back to"
                )
            target = _entry(previous)
            _activate(conn, target)
            _audit(
                conn,
                AuditAction.MODEL_ROLLBACK,
                actor,
                target.version,
                {"previous": current.version, "sha256": target.sha256},
            )
            return current.version, target.version
    except IntegrityError as exc:
        raise RegistryError("another activation ran at the same time; try again") from exc


def enable_stratum(
    engine: Engine, stratum: Stratum, evidence: StratumEvidence, actor: audit.Actor
) -> None:
    """Record ``stratum`` as enabled for the model and calibration it was validated for."""
    values = {
        "stratum": stratum.key,
        "dimension": stratum.dimension,
        "value": stratum.value,
        "enabled": True,
        "model_sha256": evidence.model_sha256,
        "calibration_version": evidence.calibration_version,
        "validation_sha256": evidence.validation_sha256,
        "data_hash": evidence.data_hash,
        "positives": evidence.positives,
        "sensitivity_lower": evidence.sensitivity_lower,
        "changed_by": actor.name[:128],
    }
    stmt = insert(PopulationStratumRow).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[PopulationStratumRow.stratum],
        set_={k: stmt.excluded[k] for k in values if k != "stratum"} | {"changed_at": func.now()},
    )
    with engine.begin() as conn:
        conn.execute(stmt)
        _audit(
            conn,
            AuditAction.POPULATION_ENABLE,
            actor,
            stratum.key,
            {
                "model_sha256": evidence.model_sha256,
                "calibration_version": evidence.calibration_version,
                "validation_sha256": evidence.validation_sha256,
                "data_hash": evidence.data_hash,
                "positives": evidence.positives,
                "sensitivity_lower": round(evidence.sensitivity_lower, 6),
            },
        )


def disable_stratum(engine: Engine, key: str, actor: audit.Actor) -> None:
    """Narrow the population again: ``key`` (``age_band=18-64``) no longer counts."""
    with engine.begin() as conn:
        done = conn.execute(
            update(PopulationStratumRow)
            .where(PopulationStratumRow.stratum == key, PopulationStratumRow.enabled.is_(True))
            .values(enabled=False, changed_by=actor.name[:128], changed_at=func.now())
            .returning(PopulationStratumRow.id)
        ).first()
        if done is None:
            raise RegistryError(f"stratum {key} is not enabled (cxr-triage population show)")
        _audit(conn, AuditAction.POPULATION_DISABLE, actor, key, {})


# ---------------------------------------------------------------- recalibration (0010)


@dataclass(frozen=True)
class ShadowSample:
    """A model's shadow scores against the radiologists' answers, one row per study.

    ``logits[i]`` is the highest shadow logit of study ``i``'s scored instances (the study's
    score, as the worklist rolls it up) and ``labels[i]`` its latest answer (1 pneumonia,
    0 no pneumonia). Studies answered ``other`` have no 0/1 label and are left out
    (``studies_other``), as are instances outside the validated population."""

    version: str
    logits: tuple[float, ...]
    labels: tuple[int, ...]
    studies_other: int

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def positives(self) -> int:
        return sum(self.labels)


def shadow_sample(engine: Engine, version: str) -> ShadowSample:
    """The shadow predictions of ``version`` joined to the latest answer of each read study."""
    finding = (
        select(Answer.finding)
        .where(Answer.study_id == StudyRead.study_id)
        .order_by(Answer.created_at.desc(), Answer.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    latest = (
        select(StudyRead.study_id, finding.label("finding"))
        .where(StudyRead.state == ReadState.READ.value)
        .subquery("latest")
    )
    query = (
        select(latest.c.finding, func.max(Prediction.logit).label("logit"))
        .join(Instance, Instance.study_id == latest.c.study_id)
        .join(Prediction, Prediction.instance_id == Instance.id)
        .where(
            Prediction.model_version == version,
            Prediction.model_role == ModelRole.SHADOW.value,
            Instance.status == InstanceStatus.DONE,
            Instance.population.is_distinct_from("outside"),
        )
        .group_by(latest.c.study_id, latest.c.finding)
        .order_by(latest.c.study_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    labels = {Finding.PNEUMONIA.value: 1, Finding.NO_PNEUMONIA.value: 0}
    labelled = [(float(r.logit), labels[r.finding]) for r in rows if r.finding in labels]
    return ShadowSample(
        version=version,
        logits=tuple(z for z, _ in labelled),
        labels=tuple(y for _, y in labelled),
        studies_other=len(rows) - len(labelled),
    )


def set_site_calibration(
    engine: Engine,
    version: str,
    *,
    calibration_uri: str,
    calibration_version: str,
    n: int,
    positives: int,
    actor: audit.Actor,
) -> ModelEntry:
    """Register a calibration fitted for ``version`` on this site's answers (``n`` studies):
    ``activate`` accepts the model without the shipped-calibration override from then on.
    Workers serving it reload after their current batch."""
    with engine.begin() as conn:
        _lock(conn)
        target = _state_of(conn, version)
        conn.execute(
            update(RegisteredModel)
            .where(RegisteredModel.version == version)
            .values(
                calibration_uri=calibration_uri,
                calibration_version=calibration_version,
                calibration_source=CalibrationSource.SITE.value,
                calibration_n=n,
                changed_at=func.now(),
            )
        )
        _audit(
            conn,
            AuditAction.MODEL_CALIBRATE,
            actor,
            version,
            {
                "sha256": target.sha256,
                "calibration_version": calibration_version,
                "previous_calibration_version": target.calibration_version,
                "studies": n,
                "positives": positives,
                "uri": calibration_uri,
            },
        )
        return _state_of(conn, version)
