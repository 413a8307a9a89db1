"""Loading the verified weights and scoring batches (with Grad-CAM)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_model.architecture import build_network
from cxr_model.contract import WEIGHTS_DIR, ModelContract, read_contract, verify_weights
from cxr_model.distribution import (
    DistributionCheck,
    ImageDistance,
    capture_features,
    load_distribution_check,
    pooled_features,
    stage_widths,
)
from cxr_model.errors import ContractError
from cxr_model.heatmaps import class_activation_maps
from cxr_model.preprocess import preprocess as _preprocess
from cxr_model.preprocess import scale_tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    """Raw network output for one image; ``cam`` is HxW float32 in [0, 1] or None.

    ``features`` are the pooled features of the same forward pass (the final linear
    layer's input), followed by the averaged outputs of the stages the check reads (its
    ``layers``), if any; ``distance`` is their distance from the training distribution when the
    model has a :class:`DistributionCheck` (``ood.json``), else None; ``inversion`` the
    inversion detector's score when the check has one; ``image`` both read against the
    check's thresholds (what the population check takes)."""

    logit: float
    cam: np.ndarray | None
    features: np.ndarray | None = None
    distance: float | None = None
    inversion: float | None = None
    image: ImageDistance | None = None


class ScoringModel:
    """A loaded, verified network plus its contract. Call from one thread at a time."""

    def __init__(
        self,
        net: nn.Module,
        contract: ModelContract,
        device: torch.device,
        distribution: DistributionCheck | None = None,
    ) -> None:
        self.net = net
        self.contract = contract
        self.device = device
        #: The training-distribution statistics for these weights (``ood.json``), if any.
        self.distribution = distribution
        self._lock = threading.Lock()

    def preprocess(self, pixels01: np.ndarray) -> torch.Tensor:
        """Decoded [0, 1] pixels -> (C, H, W) float32 input (same function as training)."""
        c = self.contract
        return _preprocess(pixels01, c.input_size, c.channels, c.intensity)

    def to_input(self, resized01: torch.Tensor) -> torch.Tensor:
        """Already-resized [0, 1] images (..., H, W) -> input (..., C, H, W)."""
        return scale_tensor(resized01, self.contract.channels, self.contract.intensity)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw logits for a (N, C, H, W) batch, no heatmaps."""
        with self._lock, torch.inference_mode():
            out = self.net(batch.to(self.device, torch.float32))
        logits: np.ndarray = out.reshape(-1).float().cpu().numpy()
        return logits

    def score_batch(self, batch: torch.Tensor, with_heatmaps: bool = True) -> list[ScoreResult]:
        """Score a (N, C, H, W) batch in one forward (plus one backward only where the head
        is not global average pooling + linear, see :mod:`cxr_model.heatmaps`), with the
        pooled features of that forward and their distance from the training distribution."""
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        n = int(batch.shape[0])
        x = batch.to(self.device, torch.float32)
        cams: list[np.ndarray | None] | np.ndarray
        layers = self.distribution.layers if self.distribution is not None else ()
        with self._lock, capture_features(self.net, layers) as captured:
            if with_heatmaps:
                logits, cams = class_activation_maps(self.net, self.contract.architecture, x)
            else:
                with torch.inference_mode():
                    out = self.net(x)
                logits = out.reshape(-1).float().cpu().numpy()
                cams = [None] * n
            feats = pooled_features(captured, n)
        check = self.distribution
        dists: list[float | None] = [None] * n
        invs: list[float | None] = [None] * n
        images: list[ImageDistance | None] = [None] * n
        if feats is not None and check is not None:
            dists = [float(d) for d in check.distances(feats)]
            scores = check.inversion_scores(feats)
            if scores is not None:
                invs = [float(v) for v in scores]
            images = [
                check.verdict(d, v) if d is not None else None
                for d, v in zip(dists, invs, strict=True)
            ]
        rows: list[np.ndarray | None] = list(feats) if feats is not None else [None] * n
        return [
            ScoreResult(float(lg), c, f, d, v, im)
            for lg, c, f, d, v, im in zip(logits, cams, rows, dists, invs, images, strict=True)
        ]


def _auto_device(device: str | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_network(weights_dir: Path) -> tuple[nn.Module, ModelContract]:
    """Read ``model.json``, verify the weights' sha256, load them (weights_only)."""
    contract = read_contract(weights_dir)
    weights = verify_weights(weights_dir, contract)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = build_network(contract.architecture)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    return net, contract


def load_model(weights_dir: Path | None = None, device: str | None = None) -> ScoringModel:
    """Load the model (default: the shipped weights), sha256-verified, in eval mode."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    net, contract = load_network(folder)
    distribution = load_distribution_check(folder, contract.sha256)
    if distribution is not None and distribution.layers:
        widths = stage_widths(net, distribution.layers)  # ContractError: no such module
        if widths != distribution.feature_dims[1:]:
            raise ContractError(
                f"{folder / 'ood.json'} reads stages {', '.join(distribution.layers)} as "
                f"{distribution.feature_dims[1:]} channels; the network gives {widths}"
            )
    dev = _auto_device(device)
    net.to(dev)
    logger.info(
        "loaded model %s %s (%s) on %s%s",
        contract.name,
        contract.version,
        contract.sha256[:12],
        dev,
        f", distribution check {distribution.method}" if distribution else "",
    )
    return ScoringModel(net, contract, dev, distribution)
