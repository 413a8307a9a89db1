"""Models a worker serves, from the registry (``cxr_db.models``), reloaded when it changes.

``read_model_folder`` checks a folder before it is registered: ``model.json`` readable, the
weights' sha256 equal to the contract's, the calibration fitted for that sha256, and an
optional drift reference for the same model. ``ensure_configured_model`` registers and
activates the configured model (``CXR_MODEL_DIR``, default the shipped one) when the
registry has no active model (``cxr-triage migrate`` and a worker's start both call it).

``ServedModels.current()`` returns the :class:`ModelSet` to score with. After each batch it
asks the registry again (two small reads) on the next job, and loads what changed: a new
active model, a shadow model, or enabled strata (the active model's effective population).
Loaded networks are kept by version and sha256, so switching back is free. Every model is
sha256-verified when loaded (``cxr_model.load_model``) and its calibration must be the one
registered for that sha256.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from cxr_common.drift import DriftReference
from cxr_common.errors import ConfigurationError
from cxr_db import audit
from cxr_db import models as registry
from cxr_db.models import ModelEntry, NewModel, ServingState
from cxr_db.schema_reading import ActorKind

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cxr_model import Calibration, ScoreResult, ScoringModel
    from cxr_model.population import Population

log = logging.getLogger(__name__)

#: The shipped model's drift reference (its calibration sample), next to this package's
#: model code; see ``cxr_model/drift_reference.json``'s ``source``.
REFERENCE_FILE = "drift_reference.json"


def _shipped_reference_path() -> Path:
    import cxr_model

    return Path(cxr_model.__file__).resolve().parent / REFERENCE_FILE


def read_model_folder(
    folder: Path,
    calibration: Path | None = None,
    *,
    version: str | None = None,
    reference: Path | None = None,
) -> NewModel:
    """Check a model folder and its calibration; what ``registry.register`` stores.

    ``calibration`` defaults to ``FOLDER/calibration.json``; ``reference`` to
    ``FOLDER/drift_reference.json`` when present (for the shipped folder, the shipped
    reference). Raises ``ConfigurationError`` saying what is wrong."""
    from cxr_model import WEIGHTS_DIR, ModelError, load_calibration, read_contract, sha256_file

    folder = folder.resolve()
    try:
        contract = read_contract(folder)
        weights = folder / contract.weights_file
        if not weights.is_file():
            raise ConfigurationError(f"{folder}: weights file {contract.weights_file} is missing")
        actual = sha256_file(weights)
        if actual != contract.sha256:
            raise ConfigurationError(
                f"{folder}: weights sha256 {actual[:12]} does not match model.json "
                f"{contract.sha256[:12]}"
            )
        cal_path = (calibration or folder / "calibration.json").resolve()
        if not cal_path.is_file():
            raise ConfigurationError(
                f"{folder}: no calibration; give --calibration FILE (cxr-triage calibrate "
                "fits one on a labelled sample from the site)"
            )
        cal = load_calibration(cal_path, model_sha256=contract.sha256)
    except ModelError as exc:
        raise ConfigurationError(f"{folder}: {exc}") from exc
    ref_path = reference
    if ref_path is None and (folder / REFERENCE_FILE).is_file():
        ref_path = folder / REFERENCE_FILE
    if ref_path is None and folder == WEIGHTS_DIR.resolve():
        ref_path = _shipped_reference_path()
    ref = _read_reference(ref_path, contract.sha256, explicit=reference is not None)
    return NewModel(
        version=version or contract.version,
        name=contract.name,
        sha256=contract.sha256,
        uri=str(folder),
        calibration_uri=str(cal_path),
        calibration_version=cal.version,
        reference=ref,
    )


def _read_reference(path: Path | None, sha256: str, *, explicit: bool) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        if explicit:
            raise ConfigurationError(f"drift reference {path} does not exist")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ref = DriftReference.from_json(data.get("drift_reference", data))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"cannot read drift reference {path}: {exc}") from exc
    if ref.model_sha256 != sha256:
        if explicit:
            raise ConfigurationError(
                f"drift reference {path} is for model {ref.model_sha256[:12]}, not {sha256[:12]}"
            )
        log.warning("ignoring drift reference %s: it is for another model", path)
        return None
    return dict(data.get("drift_reference", data))


def ensure_configured_model(
    engine: Engine,
    model_dir: Path | None = None,
    calibration: Path | None = None,
    actor: audit.Actor | None = None,
) -> ModelEntry:
    """The active model; when there is none, register (or reuse) the configured one
    (``model_dir``, default the shipped model) and activate it."""
    from cxr_model import WEIGHTS_DIR

    current = registry.active_model(engine)
    if current is not None:
        if model_dir is not None and Path(current.uri) != model_dir.resolve():
            log.warning(
                "CXR_MODEL_DIR is ignored: the registry's active model is %s (%s); "
                "use cxr-triage model register/activate to change it",
                current.version,
                current.uri,
            )
        return current
    actor = actor or audit.Actor("cxr-triage (configured model)", ActorKind.CLI)
    new = read_model_folder(model_dir or WEIGHTS_DIR, calibration)
    known = registry.get_model(engine, new.version)
    if known is None:
        return registry.register(engine, new, actor, activate_if_none=True)
    if (known.sha256, known.calibration_version) != (new.sha256, new.calibration_version):
        raise ConfigurationError(
            f"model version {new.version} is registered with other weights or calibration "
            "and no model is active: cxr-triage model list, then model activate VERSION"
        )
    try:
        # the configured model, brought back when none is active (audited as such)
        registry.activate(engine, known.version, actor, accept_shipped_calibration=True)
    except registry.RegistryError:
        pass  # another worker activated a model at the same moment
    active = registry.active_model(engine)
    if active is None:
        raise ConfigurationError("no model is active in the registry")
    return active


@dataclass(frozen=True)
class LoadedModel:
    """One registered model, loaded: network, calibration and (active model) population."""

    entry: ModelEntry
    model: ScoringModel
    calibration: Calibration
    population: Population | None = None

    @property
    def input_key(self) -> tuple[int, int, str]:
        """Models with the same key take the same preprocessed tensor."""
        c = self.model.contract
        return (c.input_size, c.channels, c.intensity)


@dataclass(frozen=True)
class ModelSet:
    """What one job is scored with: the active model and the shadow models."""

    state: ServingState
    active: LoadedModel
    shadows: tuple[LoadedModel, ...] = ()

    @property
    def all(self) -> tuple[LoadedModel, ...]:
        return (self.active, *self.shadows)


class ServedModels:
    """The registry's active and shadow models, loaded; thread-safe."""

    def __init__(self, engine: Engine, device: str | None = None) -> None:
        self._engine = engine
        self._device = device
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[ScoringModel, Calibration]] = {}
        self._current: ModelSet | None = None
        self._check_due = True

    def batch_done(self) -> None:
        """Ask the registry again on the next job (called after each batch)."""
        self._check_due = True

    def current(self) -> ModelSet:
        """The model set to score the next job with (reloaded when the registry changed)."""
        with self._lock:
            if self._current is None or self._check_due:
                self._check_due = False
                state = registry.serving_state(self._engine)
                if self._current is None or state != self._current.state:
                    self._current = self._load(state)
            return self._current

    def _load_one(self, entry: ModelEntry) -> tuple[ScoringModel, Calibration]:
        from cxr_model import ModelIntegrityError, load_calibration, load_model

        key = (entry.version, entry.sha256, entry.calibration_version)
        if key in self._cache:
            return self._cache[key]
        model = load_model(Path(entry.uri), device=self._device)
        if model.contract.sha256 != entry.sha256:
            raise ModelIntegrityError(
                f"model {entry.version}: {entry.uri} now holds weights "
                f"{model.contract.sha256[:12]}, registered as {entry.sha256[:12]}"
            )
        cal = load_calibration(Path(entry.calibration_uri), model_sha256=entry.sha256)
        if cal.version != entry.calibration_version:
            raise ModelIntegrityError(
                f"model {entry.version}: calibration {entry.calibration_uri} is now version "
                f"{cal.version}, registered as {entry.calibration_version}"
            )
        self._cache[key] = (model, cal)
        return model, cal

    def _load(self, state: ServingState) -> ModelSet:
        from cxr_model.population import population_of

        entry = state.active
        if entry is None:
            raise ConfigurationError(
                "no model is active in the registry: cxr-triage model activate VERSION"
            )
        model, cal = self._load_one(entry)
        population = population_of(model.contract)
        strata = state.strata_for(entry)
        if population is not None and strata:
            population = population.widened(strata)
        active = LoadedModel(entry, model, cal, population)
        shadows = []
        for shadow in state.shadows:
            try:
                s_model, s_cal = self._load_one(shadow)
            except Exception:  # a broken shadow model never stops triage
                log.exception("shadow model %s could not be loaded; skipped", shadow.version)
                continue
            shadows.append(LoadedModel(shadow, s_model, s_cal))
        log.info(
            "serving model %s (%s, calibration %s, threshold %.3f)%s%s",
            entry.version,
            entry.sha256[:12],
            cal.version,
            cal.threshold,
            f", shadow {', '.join(s.entry.version for s in shadows)}" if shadows else "",
            f", enabled strata {', '.join(s.key for s in strata)}" if strata else "",
        )
        return ModelSet(state, active, tuple(shadows))


@dataclass(frozen=True)
class ScoreItem:
    """One job's input to a batch: the model set it was prepared for, one tensor per input
    kind (``LoadedModel.input_key``)."""

    models: ModelSet
    tensors: dict[tuple[int, int, str], torch.Tensor]


@dataclass(frozen=True)
class SetResult:
    """One job's output: the model set and each model's raw result, by registry version."""

    models: ModelSet
    results: dict[str, ScoreResult]


def prepare(models: ModelSet, pixels: np.ndarray) -> ScoreItem:
    """Preprocess decoded pixels once per input kind the set's models take."""
    tensors: dict[tuple[int, int, str], torch.Tensor] = {}
    for loaded in models.all:
        if loaded.input_key not in tensors:
            tensors[loaded.input_key] = loaded.model.preprocess(pixels)
    return ScoreItem(models, tensors)


def score_items(items: Sequence[ScoreItem], heatmaps: bool) -> list[SetResult]:
    """Score a batch: every model of each set runs once on that set's items (the active
    model with Grad-CAM when ``heatmaps``, shadow models without)."""
    import torch

    out: list[dict[str, ScoreResult]] = [{} for _ in items]
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(id(item.models), []).append(i)
    for indices in groups.values():
        models = items[indices[0]].models
        for loaded in models.all:
            batch = torch.stack([items[i].tensors[loaded.input_key] for i in indices])
            with_cam = heatmaps and loaded is models.active
            results = loaded.model.score_batch(batch, with_heatmaps=with_cam)
            for i, result in zip(indices, results, strict=True):
                out[i][loaded.entry.version] = result
    return [SetResult(item.models, res) for item, res in zip(items, out, strict=True)]
