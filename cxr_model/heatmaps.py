"""Grad-CAM heatmaps: the target, the overlay PNG and the burned-in annotation rule.

The one place that decides what a heatmap shows, used by the worker, ``predict`` and
``evaluate``:

* Target: Grad-CAM weights the activations of the network's last convolutional block
  (:func:`gradcam_target_layer`) by the gradient of the single PNEUMONIA logit; the map is
  HxW float32 in [0, 1] at input size (:func:`grad_cam`).
* Fast path: when the head is global average pooling + one linear layer (checked on the
  network, :func:`gap_linear_head`), the same map comes from the forward pass alone
  (:func:`fast_cam`); :func:`class_activation_maps` picks the path, Grad-CAM is the reference.
* Overlay: :func:`render_overlay_png` draws the map in a jet colour map over the image in
  grey, as a PNG without text chunks (nothing about the patient or the study is written).
* Burned-in annotation: when the DICOM header says text is burned into the pixels
  (BurnedInAnnotation YES, :func:`has_burned_in_annotation`), or the image is a Secondary
  Capture or a conversion (ConversionType present), that text may name the patient, so
  the heatmap is drawn on a neutral grey field instead of the pixels (:func:`heatmap_base`):
  a PNG must never carry patient data.
* Honesty: Grad-CAM maps are min-max normalised per image, so even a confidently negative
  film gets a "hot spot". :func:`heatmap_strength` ties the colour scale to the calibrated
  score: a flagged study's map is drawn at full scale; an unflagged study's map is scaled by
  ``probability / threshold`` and never reaches more than :data:`UNFLAGGED_MAX` of the scale,
  so a confident negative shows (almost) nothing and red appears only on flagged studies.
  :func:`render_overlay_png` takes the score and applies this rule for every caller.
"""

from __future__ import annotations

import io
import logging
import weakref
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr_imaging.overlay import blend
from cxr_imaging.overlay import has_burned_in_annotation as has_burned_in_annotation
from cxr_model.calibration import CalibratedScore
from cxr_model.errors import ContractError

logger = logging.getLogger(__name__)

#: The grey the heatmap is drawn on when the pixels may not be shown.
NEUTRAL_GREY = 0.5
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
    # the colouring rule lives in cxr_imaging.overlay: the results sender reads it back
    out = Image.fromarray(blend(np.asarray(img, dtype=np.float32), heat_arr), mode="RGB")
    buf = io.BytesIO()
    # zlib level 3: lossless like the default 6; on real overlays 107 -> 47 ms, ~9 % larger
    # (BENCHMARKS.md, "Goal 3, phase 2")
    out.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


# --- Fast CAM: Grad-CAM with no backward pass, for global-average-pooling + linear heads ---
#
# When the target layer's activations A (N, C, h, w) reach the logit only through global
# average pooling and one linear layer (logit = W[0] . mean_hw(A) + b[0]), the gradient of
# the logit with respect to A is W[0] / (h*w) at every position, so Grad-CAM's channel
# weights are exactly the head's weights divided by h*w (the classic CAM identity). The map
# then needs only the forward pass's activations: one forward gives logits and maps.
# Whether a network's head has that shape is checked on the network itself (the modules run
# after the target layer and the numbers they produce), never by its name; any other head
# goes to :func:`grad_cam`, which stays the reference implementation.

#: Parameter-free modules allowed between the target layer and the linear layer.
_HEAD_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)
_HEADS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, nn.Linear | None]] = (
    weakref.WeakKeyDictionary()
)


def _gap_matches(pooled: torch.Tensor, acts: torch.Tensor) -> bool:
    """True when ``pooled`` (N, C) is the global average of ``acts`` (N, C, h, w)."""
    if acts.ndim != 4 or pooled.shape != acts.shape[:2]:
        return False
    gap = acts.float().mean(dim=(2, 3))
    return bool(torch.allclose(pooled.float(), gap, rtol=1e-3, atol=1e-4))


def gap_linear_head(net: nn.Module, layer: nn.Module, probe: torch.Tensor) -> nn.Linear | None:
    """The linear layer of ``net``'s head when the head is global average pooling + one
    linear layer over ``layer``'s output, else None; decided by running ``probe`` through it.

    Structure: every module that starts after ``layer`` has finished is a parameter-free
    container, an ``AdaptiveAvgPool2d`` to 1x1 (exactly one), a flatten/identity/dropout, or
    the last module, an ``nn.Linear``. Numbers: the linear's input is the spatial mean of the
    layer's output, and the network's output is the linear's output (so no functional op
    hides in between)."""
    acts: list[torch.Tensor] = []
    after: list[tuple[nn.Module, tuple[Any, ...]]] = []

    def on_layer(_m: nn.Module, _i: tuple[Any, ...], out: torch.Tensor) -> None:
        acts.append(out)

    def on_start(m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if acts:
            after.append((m, inputs))

    handles = [layer.register_forward_hook(on_layer)]
    handles += [m.register_forward_pre_hook(on_start) for m in net.modules() if m is not layer]
    try:
        with torch.inference_mode():
            out = net(probe)
    finally:
        for h in handles:
            h.remove()
    if len(acts) != 1 or not after:
        return None
    linear, (x, *_) = after[-1]
    if not isinstance(linear, nn.Linear):
        return None
    pools = 0
    for m, _ in after[:-1]:
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            pools += 1
        elif any(True for _ in m.children()):
            if any(True for _ in m.parameters(recurse=False)):
                return None  # a container that computes with its own parameters
        elif not isinstance(m, _HEAD_PASS_THROUGH):
            return None
    if pools != 1 or not isinstance(x, torch.Tensor) or not _gap_matches(x, acts[0]):
        return None
    with torch.inference_mode():
        expected = linear(x)
    if not torch.allclose(out.reshape(-1).float(), expected.reshape(-1).float(), atol=1e-5):
        return None
    return linear


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per map: subtract the minimum, divide by the maximum (as pytorch-grad-cam does)."""
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
    return flat.reshape(maps.shape)


def fast_cam(
    net: nn.Module, layer: nn.Module, linear: nn.Linear, batch: torch.Tensor
) -> tuple[np.ndarray, np.ndarray] | None:
    """Logits (N,) and CAM maps (N, H, W) float32 in [0, 1] from one forward pass, for a
    head found by :func:`gap_linear_head`; equal to :func:`grad_cam`'s up to float error.

    None when this batch's activations do not explain its logits (the caller then uses
    :func:`grad_cam`). Runs on the batch's device; only the results are copied back."""
    captured: list[torch.Tensor] = []

    def on_layer(_m: nn.Module, _i: tuple[Any, ...], out: torch.Tensor) -> None:
        captured.append(out)

    handle = layer.register_forward_hook(on_layer)
    try:
        with torch.inference_mode():
            out = net(batch)
    finally:
        handle.remove()
    if len(captured) != 1 or captured[0].ndim != 4:
        return None
    with torch.inference_mode():
        acts = captured[0].float()
        weight = linear.weight[0].float()
        bias = linear.bias[0].float() if linear.bias is not None else acts.new_zeros(())
        first = out.reshape(out.shape[0], -1)[:, 0].float()
        if not torch.allclose(acts.mean(dim=(2, 3)) @ weight + bias, first, rtol=1e-3, atol=1e-3):
            return None
        h, w = acts.shape[-2:]
        cam = torch.relu(torch.einsum("nchw,c->nhw", acts, weight / (h * w)))
        cam = _normalise(cam)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        cam = _normalise(torch.relu(cam))
        maps = np.clip(np.nan_to_num(cam.cpu().numpy().astype(np.float32)), 0.0, 1.0)
        logits: np.ndarray = out.detach().reshape(-1).float().cpu().numpy()
    return logits, maps


def class_activation_maps(
    net: nn.Module, architecture: str, batch: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N,) and heatmaps (N, H, W) float32 in [0, 1] for a (N, C, H, W) batch: fast
    CAM (:func:`fast_cam`, forward pass only) when the head is global average pooling + one
    linear layer, else Grad-CAM (:func:`grad_cam`). The caller holds the net's lock."""
    layer = gradcam_target_layer(net, architecture)
    known = _HEADS.get(net)
    if known is None or known[0] is not layer:
        known = (layer, gap_linear_head(net, layer, batch[:1]))
        _HEADS[net] = known
    linear = known[1]
    if linear is not None:
        result = fast_cam(net, layer, linear, batch)
        if result is not None:
            return result
        logger.warning("fast CAM did not match this batch's logits; using Grad-CAM")
    return grad_cam(net, architecture, batch)
