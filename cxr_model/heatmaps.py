"""Grad-CAM heatmaps: the target, the overlay PNG and the burned-in annotation rule.

The one place that decides what a heatmap shows, used by the worker, ``predict`` and
``evaluate``:

* Target: Grad-CAM weights the activations of the network's last convolutional block
  (:func:`gradcam_target_layer`) by the gradient of the single PNEUMONIA logit; the map is
  HxW float32 in [0, 1] at input size (:func:`grad_cam`).
* Overlay: :func:`render_overlay_png` draws the map in a jet colour map over the image in
  grey, as a PNG without text chunks (nothing about the patient or the study is written).
* Burned-in annotation: when the DICOM header says text is burned into the pixels
  (BurnedInAnnotation YES, :func:`has_burned_in_annotation`), that text may name the
  patient, so the heatmap is drawn on a neutral grey field instead of the pixels
  (:func:`heatmap_base`): a PNG must never carry patient data.
* Honesty: Grad-CAM maps are min-max normalised per image, so even a confidently negative
  film gets a "hot spot". :func:`heatmap_strength` ties the colour scale to the calibrated
  score: a flagged study's map is drawn at full scale; an unflagged study's map is scaled by
  ``probability / threshold`` and never reaches more than :data:`UNFLAGGED_MAX` of the scale,
  so a confident negative shows (almost) nothing and red appears only on flagged studies.
  :func:`render_overlay_png` takes the score and applies this rule for every caller.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from cxr_model.calibration import CalibratedScore
from cxr_model.errors import ContractError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: The grey the heatmap is drawn on when the pixels may not be shown.
NEUTRAL_GREY = 0.5
#: How much of the colour map covers the image where the heatmap is 1.
_ALPHA = 0.55
#: The highest point of the colour scale an unflagged study's map can reach (orange, not red).
UNFLAGGED_MAX = 0.7


def gradcam_target_layer(net: nn.Module, architecture: str) -> nn.Module:
    """The last convolutional block, whose activations Grad-CAM weights."""
    if architecture == "tf_efficientnet_lite0":
        return cast(nn.Module, net.bn2)  # conv_head + BN + ReLU6, 7x7 at 224 px
    if architecture == "resnet18":
        return cast(nn.Sequential, net.layer4)[-1]
    raise ContractError(f"unsupported architecture {architecture!r}")


class LogitTarget:
    """Grad-CAM target: the single PNEUMONIA logit."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.reshape(-1)[0]


def grad_cam(
    net: nn.Module, architecture: str, batch: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """One forward and one backward pass over a (N, C, H, W) batch on the net's device.

    Returns the logits (N,) and the heatmaps (N, H, W) float32 in [0, 1]. The caller holds
    whatever lock guards ``net``; its gradients are cleared afterwards."""
    from pytorch_grad_cam import GradCAM

    layer = gradcam_target_layer(net, architecture)
    with torch.enable_grad(), GradCAM(model=net, target_layers=[layer]) as cam:
        cams = cam(input_tensor=batch, targets=[LogitTarget() for _ in range(batch.shape[0])])
        logits: np.ndarray = cam.outputs.detach().reshape(-1).float().cpu().numpy()
    net.zero_grad(set_to_none=True)
    maps = np.clip(np.nan_to_num(np.asarray(cams, dtype=np.float32)), 0.0, 1.0)
    return logits, maps.astype(np.float32)


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the header says text is burned into the pixels (BurnedInAnnotation YES)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def heatmap_base(pixels01: np.ndarray, *, burned_in: bool) -> np.ndarray:
    """The image the heatmap is drawn on: the pixels, or a neutral grey field of the same
    shape when text is burned into them."""
    if burned_in:
        return np.full_like(pixels01, NEUTRAL_GREY)
    return pixels01


def heatmap_strength(score: CalibratedScore) -> float:
    """How much of the colour scale the map's peak may use, from the calibrated score.

    Flagged: 1 (the peak is red). Not flagged: ``min(probability / threshold, 1) *
    UNFLAGGED_MAX``, so p = 0.01 at a threshold of 0.28 gives 0.025 (invisible) and a study
    just under the threshold shows at most orange."""
    if score.flagged:
        return 1.0
    if not score.threshold > 0:
        return 0.0
    ratio = min(max(score.probability / score.threshold, 0.0), 1.0)
    return float(ratio * UNFLAGGED_MAX)


def _jet(v: np.ndarray) -> np.ndarray:
    """A jet-like colour map: v in [0, 1] -> uint8 RGB."""
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def render_overlay_png(
    pixels01: np.ndarray,
    cam: np.ndarray,
    *,
    burned_in: bool,
    score: CalibratedScore,
    max_size: int = 512,
) -> bytes:
    """Render ``cam`` (any size, [0, 1]) blended over :func:`heatmap_base` in grey.

    The map is scaled by :func:`heatmap_strength` of ``score`` (the study's calibrated score,
    :meth:`Calibration.score`), so an unflagged study never shows a red hot spot.
    ``burned_in`` is :func:`has_burned_in_annotation` of the image's header (``False`` for an
    ordinary image file). The longest side is at most ``max_size``. The PNG has no text
    chunks: nothing about the patient or study is written into it.
    """
    base = heatmap_base(np.asarray(pixels01, dtype=np.float32), burned_in=burned_in)
    grey = np.clip(base, 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {grey.shape}")
    img = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L")
    scale = min(1.0, max_size / max(img.size))
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    heat = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    heat = heat * np.float32(heatmap_strength(score))
    heat_img = Image.fromarray((heat * 255.0 + 0.5).astype(np.uint8), mode="L")
    heat_arr = np.asarray(heat_img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    heat_arr /= 255.0
    rgb = np.asarray(img, dtype=np.float32)
    alpha = (_ALPHA * heat_arr)[..., None]
    blended = rgb * (1.0 - alpha) + _jet(heat_arr).astype(np.float32) * alpha
    out = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
