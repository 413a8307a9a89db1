"""Models a worker serves, from the registry (``cxr_db.registry.store``), reloaded when it changes.

Registering a model (checking its folder, the configured model on an empty registry) is
``cxr_registry``'s, shared with ``cxr-triage migrate`` and ``model register``.

``ServedModels.current()`` returns the :class:`ModelSet` to score with. After each batch it
asks the registry again (two small reads) on the next job, and loads what changed: a new
active model, a shadow model, or enabled strata (the active model's effective population).
Loaded networks are kept by version and sha256, so switching back is free. Every model is
sha256-verified when loaded (``cxr_model.load_model``) and its calibration must be the one
registered for that sha256.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from cxr_common.errors import ConfigurationError
from cxr_db.registry import store as registry
from cxr_db.registry.store import ModelEntry, ServingState

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cxr_model import Calibration, ScoreResult, ScoringModel
    from cxr_model.population import Population

log = logging.getLogger(__name__)


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
