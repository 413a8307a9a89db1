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

An image whose distance is above ``threshold`` (chosen on an in-distribution sample from the
site so that a stated share passes) is **outside by image**
(:meth:`DistributionCheck.outside`).

The statistics ship next to the weights: ``ood.json`` (schema, method, model version and
sha256, threshold, the sha256 of the arrays) and ``ood.npz`` (arrays only, read with
``allow_pickle=False``). :func:`load_distribution_check` refuses statistics fitted for
other weights or whose arrays do not match their recorded sha256.
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

from cxr_common.population import IMAGE_REASON
from cxr_model.contract import sha256_file
from cxr_model.errors import CalibrationMismatchError, ContractError, ModelIntegrityError

logger = logging.getLogger(__name__)

__all__ = [
    "DISTRIBUTION_SCHEMA",
    "OOD_ARRAYS",
    "OOD_FILE",
    "DistributionCheck",
    "ImageDistance",
    "capture_pooled",
    "classifier_layer",
    "load_distribution_check",
    "pooled_features",
]

DISTRIBUTION_SCHEMA = "cxr-triage/distribution/1"
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
    against: ``outside`` when above it (or not a finite number)."""

    distance: float
    threshold: float
    method: str = ""

    @property
    def outside(self) -> bool:
        return not math.isfinite(self.distance) or self.distance > self.threshold

    @property
    def facts(self) -> str:
        """Staff-readable: :data:`IMAGE_REASON` and the figures, when outside."""
        return (
            f"{IMAGE_REASON} (feature distance {self.distance:.4g} > threshold "
            f"{self.threshold:.4g})"
        )


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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ContractError(f"unknown distribution method {self.method!r}; known {METHODS}")
        need = {"mahalanobis": ("means", "components", "scales", "residual_var"), "knn": ("bank",)}
        missing = [k for k in need[self.method] if k not in self.arrays]
        if missing:
            raise ContractError(f"distribution statistics lack {', '.join(missing)}")

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Distance of each (N, D) feature row from the training distribution (N,)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        if self.method == "mahalanobis":
            return _mahalanobis(f, self.arrays)
        return _knn(f, self.arrays)

    def verdict(self, distance: float) -> ImageDistance:
        """``distance`` read against this check's threshold."""
        return ImageDistance(float(distance), self.threshold, self.method)

    def outside(self, distance: float) -> bool:
        """True when ``distance`` is above the threshold (or not a finite number)."""
        return self.verdict(distance).outside

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
        if meta.get("schema") != DISTRIBUTION_SCHEMA:
            raise ContractError(f"{path}: unsupported schema {meta.get('schema')!r}")
        arrays_path = weights_dir / str(meta["arrays_file"])
        if Path(str(meta["arrays_file"])).name != str(meta["arrays_file"]):
            raise ContractError(f"{path}: arrays_file must be a file name next to it")
        sha = str(meta["arrays_sha256"])
        fitted_for = str(meta["model_sha256"])
        threshold = float(meta["threshold"])
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
    )
