"""Grey image + heatmap overlay rendered as a metadata-free PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _jet(v: np.ndarray) -> np.ndarray:
    """A jet-like colour map: v in [0, 1] -> uint8 RGB."""
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def render_overlay_png(pixels01: np.ndarray, cam: np.ndarray, max_size: int = 512) -> bytes:
    """Render ``pixels01`` in grey with ``cam`` (any size, [0, 1]) blended on top.

    The longest side is at most ``max_size``. The PNG has no text chunks: nothing about the
    patient or study is written into it.
    """
    grey = np.clip(np.asarray(pixels01, dtype=np.float32), 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {grey.shape}")
    img = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L")
    scale = min(1.0, max_size / max(img.size))
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    heat = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    heat_img = Image.fromarray((heat * 255.0 + 0.5).astype(np.uint8), mode="L")
    heat_arr = np.asarray(heat_img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    heat_arr /= 255.0
    base = np.asarray(img, dtype=np.float32)
    alpha = (0.55 * heat_arr)[..., None]
    blended = base * (1.0 - alpha) + _jet(heat_arr).astype(np.float32) * alpha
    out = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
