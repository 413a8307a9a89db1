"""Image-based distribution check: how far an image's features are from the training images.

The network's own **pooled features** (the input of its final linear layer: global average
pooling of the last convolutional block, 1280 numbers for EfficientNet-Lite0) are captured
in the same forward pass that gives the logit (:func:`capture_pooled`, a forward pre-hook);
no other network runs. :class:`DistributionCheck` turns them into one distance:

* ``mahalanobis`` (Lee et al., NeurIPS 2018, class-conditional means with one shared
  covariance), on the L2-normalised features (``normalise``; raw features are supported),
  stored compactly as probabilistic PCA: the top ``k`` principal directions of the
  within-class covariance (whitened by their variances) plus the residual outside them,
  scaled by the mean residual variance::

      d(f) = min_c  || (V_k^T (f - mu_c)) / sqrt(l_k) ||^2 + || r_c ||^2 / sigma_r^2

* ``knn`` (Sun et al., ICML 2022): distance from the L2-normalised features to the
  ``k``-th nearest training image's, in the same normalised space.

A Mahalanobis check may also read **intermediate stages** (Lee et al.'s feature ensemble):
``layers`` names network modules (``blocks.3`` ... ``blocks.6`` for EfficientNet-Lite0)
whose outputs are averaged over space in the same forward pass (forward hooks,
:func:`capture_features`). Each stage gets its own Mahalanobis statistics, and the distance
is the sum over the pooled features and every stage of that stage's distance divided by its
median over the training images (``distance_scales``), so no stage dominates by its size::

    D(x) = sum_j d_j(x) / median_train(d_j)

The feature vector of one image is then the pooled features followed by each stage's
averaged output, in ``layers`` order; :meth:`DistributionCheck.split` cuts it apart.

A second statistic may ship with it, read by OR: an **inversion detector**, a logistic
regression on the same L2-normalised features, fitted on training images and their
greyscale inversions (a MONOCHROME1 film decoded or exported as MONOCHROME2 is a known,
named failure of acquisition and export)::

    s(f) = w . (f / ||f||) + b        (the log-odds that the image is inverted)

An image whose distance is above ``threshold``, or whose inversion score is above
``inversion_threshold`` (both chosen on an in-distribution sample from the site so that a
stated share passes both together), is **outside by image**
(:meth:`DistributionCheck.outside`); :class:`ImageDistance` says which statistic decided.

The statistics ship next to the weights: ``ood.json`` (schema, method, model version and
sha256, threshold, the inversion block when present, the sha256 of the arrays) and
``ood.npz`` (arrays only, read with ``allow_pickle=False``).
:func:`load_distribution_check` refuses statistics fitted for other weights or whose arrays
do not match their recorded sha256.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from cxr_common.population import IMAGE_REASON, INVERTED_ACTION, INVERTED_REASON
from cxr_model.contract import sha256_file
from cxr_model.errors import CalibrationMismatchError, ContractError, ModelIntegrityError

logger = logging.getLogger(__name__)

__all__ = [
    "DISTRIBUTION_SCHEMA",
    "OOD_ARRAYS",
    "OOD_FILE",
    "DistributionCheck",
    "ImageDistance",
    "capture_features",
    "capture_pooled",
    "classifier_layer",
    "load_distribution_check",
    "pooled_features",
    "stage_prefix",
    "stage_widths",
]

#: Schema 2 adds the optional ``inversion`` block, schema 3 the optional ``layers`` (a feature
#: ensemble over intermediate stages); schema 1 and 2 files still load.
DISTRIBUTION_SCHEMA = "cxr-triage/distribution/3"
READABLE_SCHEMAS = ("cxr-triage/distribution/1", "cxr-triage/distribution/2", DISTRIBUTION_SCHEMA)
MAHALANOBIS_ARRAYS = ("means", "components", "scales", "residual_var")
INVERSION_ARRAYS = ("inversion_weights", "inversion_bias")
OOD_FILE = "ood.json"
OOD_ARRAYS = "ood.npz"
METHODS = ("mahalanobis", "knn")


def classifier_layer(net: nn.Module) -> nn.Linear:
    """The network's final linear layer, whose input is the pooled feature vector."""
    last: nn.Linear | None = None
    for module in net.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ContractError("the network has no linear layer to take pooled features from")
    return last


@contextlib.contextmanager
def capture_pooled(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of ``net`` appends the input of its final linear layer
    (N, D), detached, to the yielded list. Costs nothing beyond the forward pass itself."""
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        if isinstance(x, torch.Tensor):
            captured.append(x.detach())

    handle = classifier_layer(net).register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _module(net: nn.Module, name: str) -> nn.Module:
    modules: dict[str, nn.Module] = dict(net.named_modules())
    if name not in modules:
        raise ContractError(f"the network has no module {name!r} to take stage features from")
    return modules[name]


@contextlib.contextmanager
def capture_features(net: nn.Module, layers: tuple[str, ...] = ()) -> Iterator[list[torch.Tensor]]:
    """Like :func:`capture_pooled`, and also the spatial average of each module in ``layers``:
    every forward pass appends one (N, D + sum of the stages' channels) tensor, the pooled
    features followed by each stage's averaged output in ``layers`` order."""
    if not layers:
        with capture_pooled(net) as pooled_only:
            yield pooled_only
        return
    captured: list[torch.Tensor] = []
    stages: dict[str, torch.Tensor] = {}

    def stage_hook(name: str) -> Any:
        def hook(_m: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                stages[name] = output.detach().float().mean(dim=(2, 3))

        return hook

    def pooled_hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        if isinstance(x, torch.Tensor) and all(n in stages for n in layers):
            pooled = x.detach().float().reshape(x.shape[0], -1)
            captured.append(torch.cat([pooled, *(stages[n] for n in layers)], dim=1))
        stages.clear()

    handles = [_module(net, n).register_forward_hook(stage_hook(n)) for n in layers]
    handles.append(classifier_layer(net).register_forward_pre_hook(pooled_hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def stage_widths(net: nn.Module, layers: tuple[str, ...]) -> tuple[int, ...]:
    """The number of channels each module in ``layers`` outputs (its last convolution's or
    batch norm's), i.e. the width of its part of a :func:`capture_features` row."""
    widths = []
    for name in layers:
        width = None
        for m in _module(net, name).modules():
            if isinstance(m, nn.Conv2d):
                width = m.out_channels
            elif isinstance(m, nn.BatchNorm2d):
                width = m.num_features
        if width is None:
            raise ContractError(f"cannot tell how many channels module {name!r} outputs")
        widths.append(int(width))
    return tuple(widths)


def stage_prefix(index: int) -> str:
    """The arrays' key prefix of the ``index``-th stage in ``layers`` (0-based)."""
    return f"stage{index}_"


def pooled_features(captured: list[torch.Tensor], n: int) -> np.ndarray | None:
    """The (n, D) float32 features of the last forward pass, or None if none was seen."""
    if not captured:
        return None
    feats = captured[-1].float().reshape(captured[-1].shape[0], -1)
    if feats.shape[0] != n:
        return None
    out: np.ndarray = feats.cpu().numpy().astype(np.float32, copy=False)
    return out


@dataclass(frozen=True)
class ImageDistance:
    """One image's distance from the training distribution and the threshold it is read
    against, plus (when the check has one) its inversion score and threshold. ``outside``
    when either is above its threshold (or not a finite number)."""

    distance: float
    threshold: float
    method: str = ""
    inversion: float | None = None
    inversion_threshold: float | None = None

    @property
    def unlike(self) -> bool:
        """The distance decided: far from the training distribution."""
        return not math.isfinite(self.distance) or self.distance > self.threshold

    @property
    def inverted(self) -> bool:
        """The inversion detector decided: the image looks greyscale-inverted."""
        if self.inversion is None or self.inversion_threshold is None:
            return False
        return not math.isfinite(self.inversion) or self.inversion > self.inversion_threshold

    @property
    def outside(self) -> bool:
        return self.unlike or self.inverted

    @property
    def decided_by(self) -> str:
        """Which image statistic put it outside: ``distance``, ``inversion``, ``both`` or ""."""
        if self.unlike and self.inverted:
            return "both"
        return "distance" if self.unlike else "inversion" if self.inverted else ""

    @property
    def facts(self) -> str:
        """Staff-readable: :data:`IMAGE_REASON`, which statistic decided with its figures and,
        for an inverted image, what to do (:data:`INVERTED_ACTION`)."""
        parts = []
        if self.unlike:
            parts.append(f"feature distance {self.distance:.4g} > threshold {self.threshold:.4g}")
        if self.inverted:
            parts.append(
                f"{INVERTED_REASON}, inversion score {self.inversion:.3g} > threshold "
                f"{self.inversion_threshold:.3g}: {INVERTED_ACTION}"
            )
        return f"{IMAGE_REASON} ({'; '.join(parts)})"


@dataclass(frozen=True)
class DistributionCheck:
    """Fitted training-distribution statistics for one model (its weights' sha256)."""

    method: str
    model_sha256: str
    model_version: str
    threshold: float
    arrays: dict[str, np.ndarray]
    fitted_on: dict[str, Any] = field(default_factory=dict)
    threshold_rule: str = ""
    #: Anything else worth keeping with the statistics (evaluation figures, parameters).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The inversion detector's threshold (None: the check has no inversion detector; its
    #: arrays :data:`INVERSION_ARRAYS` are in ``arrays`` when it has one).
    inversion_threshold: float | None = None
    #: How the inversion detector was fitted and its threshold chosen.
    inversion: dict[str, Any] = field(default_factory=dict)
    #: Intermediate stages (module names) read with the pooled features (a Mahalanobis
    #: feature ensemble); empty: the pooled features alone.
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ContractError(f"unknown distribution method {self.method!r}; known {METHODS}")
        if self.layers and self.method != "mahalanobis":
            raise ContractError("only a mahalanobis check reads intermediate stages")
        need = {"mahalanobis": MAHALANOBIS_ARRAYS, "knn": ("bank",)}
        missing = [k for k in need[self.method] if k not in self.arrays]
        for i in range(len(self.layers)):
            missing += [
                stage_prefix(i) + k
                for k in MAHALANOBIS_ARRAYS
                if stage_prefix(i) + k not in self.arrays
            ]
        if self.layers and "distance_scales" not in self.arrays:
            missing.append("distance_scales")
        if self.inversion_threshold is not None:
            missing += [k for k in INVERSION_ARRAYS if k not in self.arrays]
        if missing:
            raise ContractError(f"distribution statistics lack {', '.join(missing)}")
        if self.layers and self.arrays["distance_scales"].shape != (len(self.layers) + 1,):
            raise ContractError("distance_scales must hold one scale per stage plus the pooled")

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """The width of each part of a feature row: the pooled features, then each stage."""
        if self.method != "mahalanobis":
            return ()
        dims = [int(self.arrays["means"].shape[1])]
        dims += [
            int(self.arrays[stage_prefix(i) + "means"].shape[1]) for i in range(len(self.layers))
        ]
        return tuple(dims)

    def split(self, features: np.ndarray) -> list[np.ndarray]:
        """A (N, D) feature matrix cut into the pooled part and each stage's part."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        dims = self.feature_dims
        if sum(dims) != f.shape[1]:
            raise ContractError(
                f"feature rows have {f.shape[1]} numbers; this check reads {sum(dims)} "
                f"(pooled + stages {', '.join(self.layers) or 'none'})"
            )
        return np.split(f, np.cumsum(dims)[:-1], axis=1)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Distance of each (N, D) feature row from the training distribution (N,)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        if self.method != "mahalanobis":
            return _knn(f, self.arrays)
        if not self.layers:
            return _mahalanobis(f, self.arrays)
        parts = self.split(f)
        scales = self.arrays["distance_scales"].astype(np.float64)
        total = _mahalanobis(parts[0], self.arrays) / scales[0]
        for i, part in enumerate(parts[1:]):
            total = total + _mahalanobis(part, _stage_arrays(self.arrays, i)) / scales[i + 1]
        out: np.ndarray = total
        return out

    def inversion_scores(self, features: np.ndarray) -> np.ndarray | None:
        """Each (N, D) feature row's inversion score (log-odds of a greyscale-inverted image),
        or None when the check has no inversion detector."""
        if self.inversion_threshold is None:
            return None
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        if self.layers:
            f = self.split(f)[0]
        return inversion_score(f, self.arrays)

    def verdict(self, distance: float, inversion: float | None = None) -> ImageDistance:
        """``distance`` (and ``inversion``, if given) read against this check's thresholds.
        A check with an inversion detector reads a missing inversion score as not a number
        (outside), so a caller that forgets it cannot pass an image unchecked."""
        if self.inversion_threshold is not None and inversion is None:
            inversion = math.nan
        return ImageDistance(
            float(distance),
            self.threshold,
            self.method,
            None if inversion is None else float(inversion),
            self.inversion_threshold,
        )

    def outside(self, distance: float, inversion: float | None = None) -> bool:
        """True when ``distance`` or ``inversion`` is above its threshold (or not a number)."""
        return self.verdict(distance, inversion).outside

    def save(self, folder: Path) -> Path:
        """Write ``ood.npz`` and ``ood.json`` (which records the arrays' sha256)."""
        arrays_path = folder / OOD_ARRAYS
        with arrays_path.open("wb") as fh:
            np.savez_compressed(fh, **cast(dict[str, Any], self.arrays))
        meta = {
            "schema": DISTRIBUTION_SCHEMA,
            "method": self.method,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "arrays_file": OOD_ARRAYS,
            "arrays_sha256": sha256_file(arrays_path),
            "fitted_on": self.fitted_on,
            "extra": self.extra,
        }
        if self.layers:
            meta["layers"] = list(self.layers)
        if self.inversion_threshold is not None:
            meta["inversion"] = {**self.inversion, "threshold": self.inversion_threshold}
        path = folder / OOD_FILE
        path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path


def _mahalanobis(f: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    if "normalise" in a and int(a["normalise"]):
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    means = a["means"].astype(np.float64)  # (C, D)
    comps = a["components"].astype(np.float64)  # (D, k), orthonormal columns
    scales = a["scales"].astype(np.float64)  # (k,) standard deviations along them
    residual_var = float(a["residual_var"])
    best = np.full(f.shape[0], np.inf)
    for mu in means:
        x = f - mu
        z = x @ comps
        resid = np.einsum("nd,nd->n", x, x) - np.einsum("nk,nk->n", z, z)
        d = np.einsum("nk,nk->n", z / scales, z / scales) + np.maximum(resid, 0.0) / residual_var
        best = np.minimum(best, d)
    return best


def _stage_arrays(a: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    prefix = stage_prefix(index)
    out = {k.removeprefix(prefix): v for k, v in a.items() if k.startswith(prefix)}
    out.setdefault("normalise", a.get("normalise", np.asarray(1)))
    return out


def inversion_score(f: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    """Logistic regression on the L2-normalised features: the log-odds of an inverted image."""
    x = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    w = a["inversion_weights"].astype(np.float64).reshape(-1)
    out: np.ndarray = x @ w + float(a["inversion_bias"])
    return out


def _knn(f: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    bank = a["bank"].astype(np.float32)  # (M, D), rows L2-normalised
    k = int(a["k"]) if "k" in a else 1
    x = (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    sims = x @ bank.T
    k = max(1, min(k, bank.shape[0]))
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    dist: np.ndarray = np.sqrt(np.maximum(2.0 - 2.0 * kth.astype(np.float64), 0.0))
    return dist


def load_distribution_check(
    weights_dir: Path, model_sha256: str | None = None, *, required: bool = False
) -> DistributionCheck | None:
    """The statistics in ``weights_dir/ood.json`` (None when absent and not ``required``).

    Raises :class:`CalibrationMismatchError` when they were fitted for other weights and
    :class:`ModelIntegrityError` when the arrays file differs from its recorded sha256."""
    path = weights_dir / OOD_FILE
    if not path.is_file():
        if required:
            raise ContractError(f"{path} does not exist (cxr-triage ood-fit writes it)")
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("schema") not in READABLE_SCHEMAS:
            raise ContractError(f"{path}: unsupported schema {meta.get('schema')!r}")
        arrays_path = weights_dir / str(meta["arrays_file"])
        if Path(str(meta["arrays_file"])).name != str(meta["arrays_file"]):
            raise ContractError(f"{path}: arrays_file must be a file name next to it")
        sha = str(meta["arrays_sha256"])
        fitted_for = str(meta["model_sha256"])
        threshold = float(meta["threshold"])
        inversion = dict(meta.get("inversion") or {})
        layers = tuple(str(n) for n in meta.get("layers") or ())
        inversion_threshold = (
            float(inversion.pop("threshold")) if "threshold" in inversion else None
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"cannot read {path}: {exc}") from exc
    if model_sha256 is not None and fitted_for != model_sha256:
        raise CalibrationMismatchError(
            f"{path} was fitted for model {fitted_for[:12]}, not {model_sha256[:12]}"
        )
    if not arrays_path.is_file() or sha256_file(arrays_path) != sha:
        raise ModelIntegrityError(f"{arrays_path} is missing or differs from its sha256 in {path}")
    with np.load(arrays_path, allow_pickle=False) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    return DistributionCheck(
        method=str(meta["method"]),
        model_sha256=fitted_for,
        model_version=str(meta.get("model_version", "")),
        threshold=threshold,
        arrays=arrays,
        fitted_on=dict(meta.get("fitted_on") or {}),
        threshold_rule=str(meta.get("threshold_rule", "")),
        extra=dict(meta.get("extra") or {}),
        inversion_threshold=inversion_threshold,
        inversion=inversion,
        layers=layers,
    )
