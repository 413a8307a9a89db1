"""The one preprocessing used by training and by the worker.

``pixels01`` (float, HxW, [0, 1], MONOCHROME2: bright = dense) is resized (squashed, not
cropped) to ``input_size`` x ``input_size`` with antialiased bilinear interpolation, mapped to
8-bit units and scaled as ``(x - 127) / 128`` (what the converted EfficientNet-Lite weights
expect), then replicated to three channels. With ``intensity="histeq"`` (a contract field)
the resized image is first histogram-equalised (256 bins, mid-rank CDF), which makes the
input invariant to monotone exposure/contrast/gamma differences between sites.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SCALING = "(255*x - 127) / 128, x in [0,1] grey replicated to 3 channels"
INTENSITIES = ("none", "histeq")


def equalize(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Histogram-equalise each (..., H, W) image in [0, 1]: value -> mid-rank CDF."""
    shape = x.shape
    flat = x.reshape(-1, shape[-2] * shape[-1])
    idx = (flat.clamp(0, 1) * (bins - 1)).round().long()
    counts = torch.zeros(flat.shape[0], bins, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(flat, dtype=torch.float32))
    cdf = counts.cumsum(1) - 0.5 * counts
    out = cdf.gather(1, idx) / float(flat.shape[1])
    return out.reshape(shape).to(x.dtype)


def resize_pixels(pixels01: np.ndarray, input_size: int) -> np.ndarray:
    """Resize a 2-D [0, 1] image to ``input_size`` squared (float32, clipped to [0, 1])."""
    arr = np.asarray(pixels01, dtype=np.float32)
    if arr.ndim == 3:  # tolerate HxWxC grey-in-RGB
        arr = arr.mean(axis=2, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    if arr.shape != (input_size, input_size):
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        t = F.interpolate(
            t, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True
        )
        arr = t[0, 0].numpy()
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def scale_tensor(
    resized01: torch.Tensor, channels: int = 3, intensity: str = "none"
) -> torch.Tensor:
    """Map resized [0, 1] images (..., H, W) to network input (..., C, H, W)."""
    if intensity == "histeq":
        resized01 = equalize(resized01)
    elif intensity != "none":
        raise ValueError(f"unknown intensity normalisation {intensity!r}")
    x = (resized01 * 255.0 - 127.0) / 128.0
    x = x.unsqueeze(-3)
    if channels != 1:
        x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
    return x.contiguous()


def preprocess(
    pixels01: np.ndarray, input_size: int = 224, channels: int = 3, intensity: str = "none"
) -> torch.Tensor:
    """Decoded pixels -> (C, H, W) float32 network input."""
    resized = torch.from_numpy(resize_pixels(pixels01, input_size))
    return scale_tensor(resized, channels, intensity)
