"""Batch augmentation on resized [0, 1] images, aimed at acquisition differences."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, gen: torch.Generator, strength: str = "strong") -> torch.Tensor:
    """Random affine + intensity (gamma, contrast, brightness), blur, noise, cutout.

    ``x``: (N, H, W) float32 in [0, 1]. Returns the same shape, clipped to [0, 1].
    """
    if strength == "none":
        return x
    n, h, w = x.shape
    strong = strength == "strong"

    def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
        return torch.rand(size, generator=gen) * (hi - lo) + lo

    # geometry: rotation, scale, translation, slight shear
    ang = u(-10, 10) * math.pi / 180
    scale = u(0.88, 1.15)
    tx, ty = u(-0.08, 0.08), u(-0.08, 0.08)
    shear = u(-0.05, 0.05)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    x = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x[:, 0]

    # intensity: gamma, contrast around the image mean, brightness
    g_lo, g_hi = (0.6, 1.7) if strong else (0.85, 1.2)
    c_lo, c_hi = (0.6, 1.45) if strong else (0.85, 1.15)
    b_amp = 0.15 if strong else 0.05
    gamma = torch.exp(u(math.log(g_lo), math.log(g_hi)))[:, None, None]
    x = x.clamp(0, 1) ** gamma
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * u(c_lo, c_hi)[:, None, None] + mean + u(-b_amp, b_amp)[:, None, None]
    if strong:
        # blur on a quarter of the batch
        blur = torch.rand(n, generator=gen) < 0.25
        if bool(blur.any()):
            k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
            xb = x[blur][:, None]
            xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
            xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
            x[blur] = xb[:, 0]
        # gaussian noise on a quarter
        noisy = (torch.rand(n, generator=gen) < 0.25).float()[:, None, None]
        sigma = u(0.0, 0.04)[:, None, None] * noisy
        x = x + torch.randn(x.shape, generator=gen) * sigma
        # cutout (text markers, leads) on a quarter
        for i in torch.nonzero(torch.rand(n, generator=gen) < 0.25).flatten().tolist():
            ch, cw = int(u(0.08, 0.25, 1).item() * h), int(u(0.08, 0.25, 1).item() * w)
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen).item())
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen).item())
            x[i, y0 : y0 + ch, x0 : x0 + cw] = float(u(0.0, 1.0, 1).item())
    return x.clamp(0.0, 1.0)


# --- shortcut breaking (issue 11) -------------------------------------------------------------

MARKER_TEXTS = ("R", "L", "R", "L", "AP", "PA", "SUPINE", "PORTABLE")


def _rint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] from the training generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen).item())


def _runi(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(torch.rand(1, generator=gen).item()) * (hi - lo) + lo


def synthetic_text(gen: torch.Generator) -> str:
    """A random burned-in string: a laterality/view marker, a timestamp, or digits."""
    kind = _rint(gen, 0, 2)
    if kind == 0:
        return MARKER_TEXTS[_rint(gen, 0, len(MARKER_TEXTS) - 1)]
    if kind == 1:
        y, mo, d = _rint(gen, 2008, 2024), _rint(gen, 1, 12), _rint(gen, 1, 28)
        hh, mm = _rint(gen, 0, 23), _rint(gen, 0, 59)
        sep = "-" if _rint(gen, 0, 1) else "/"
        return f"{y}{sep}{mo:02d}{sep}{d:02d} {hh:02d}:{mm:02d}"
    return "".join(str(_rint(gen, 0, 9)) for _ in range(_rint(gen, 2, 8)))


@functools.lru_cache(maxsize=64)
def _font(size_px: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size_px)


def text_mask(text: str, size_px: int) -> np.ndarray:
    """A tight float32 [0, 1] mask of ``text`` in PIL's default font (FreeType, built in)."""
    from PIL import Image, ImageDraw

    font = _font(max(6, size_px))
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font)
    left, top, right, bottom = (int(round(v)) for v in box)
    img = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


def burn_in_text(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Paste synthetic markers / timestamps / digits onto a random share ``p`` of the batch.

    Applied to both classes alike, so burned-in text stops predicting the label. Positions are
    the corners where real films carry them (half of the time) or anywhere; the text is bright
    (as burned in) or, rarely, dark; a large single-letter marker is common. Deterministic given
    the generator state. ``x``: (N, H, W) in [0, 1]; a new tensor is returned.
    """
    n, h, w = x.shape
    arr = x.numpy().copy()
    for i in range(n):
        if float(torch.rand(1, generator=gen).item()) >= p:
            continue
        for _ in range(_rint(gen, 1, 3)):
            text = synthetic_text(gen)
            big = len(text) <= 2 and _rint(gen, 0, 1) == 1
            m = text_mask(text, _rint(gen, 18, 40) if big else _rint(gen, 7, 14))
            mh, mw = min(m.shape[0], h), min(m.shape[1], w)
            m = m[:mh, :mw]
            if _rint(gen, 0, 1):  # a corner band, where real films carry their text
                left = _rint(gen, 0, 1) == 1
                top = _rint(gen, 0, 1) == 1
                dx, dy = _rint(gen, 0, int(0.15 * w)), _rint(gen, 0, int(0.12 * h))
                cx = min(dx, w - mw) if left else max(0, w - mw - dx)
                cy = min(dy, h - mh) if top else max(0, h - mh - dy)
            else:
                cx, cy = _rint(gen, 0, w - mw), _rint(gen, 0, h - mh)
            level = _runi(gen, 0.85, 1.0) if _rint(gen, 0, 4) else _runi(gen, 0.0, 0.15)
            alpha = m * _runi(gen, 0.7, 1.0)
            region = arr[i, cy : cy + mh, cx : cx + mw]
            arr[i, cy : cy + mh, cx : cx + mw] = region * (1 - alpha) + level * alpha
    return torch.from_numpy(arr)


def _box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Separable box blur of (N, H, W) with an odd kernel ``k`` (reflect padding)."""
    r = k // 2
    t = F.pad(x[:, None], (r, r, r, r), mode="reflect")[:, 0].double()
    c = F.pad(t.cumsum(2), (1, 0))  # running sums along W, then H (an integral image)
    t = c[..., k:] - c[..., :-k]
    c = F.pad(t.cumsum(1), (0, 0, 1, 0))
    t = (c[:, k:] - c[:, :-k]) / (k * k)
    return t.to(x.dtype)


def match_histograms(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Give each image in ``x`` the grey-level distribution of the same-index image in ``ref``."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    order = flat.argsort(dim=1)
    ref_sorted = ref.reshape(n, -1).sort(dim=1).values
    out = torch.empty_like(flat)
    out.scatter_(1, order, ref_sorted)
    return out.reshape(x.shape)


def style_randomise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Acquisition-style randomisation on (N, H, W) [0, 1] images.

    * histogram matching to another image of the batch (which, with group-balanced sampling,
      usually comes from another acquisition group), p 0.3, blended 50–100 %;
    * CLAHE-like local contrast: ``x + a (x - boxblur_k(x))`` (a in [-0.4, 1.0], k 15–41 px), p 0.4;
    * sharpen/soften at a small scale, p 0.2; speckle-like multiplicative noise, p 0.2.
    """
    n = x.shape[0]
    if n == 0:
        return x
    x = x.clone()
    sel = torch.nonzero(torch.rand(n, generator=gen) < 0.3).flatten()
    j = (torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=gen)) % n
    a = torch.rand(n, generator=gen) * 0.5 + 0.5
    if len(sel) and n > 1:
        matched = match_histograms(x[sel], x[j[sel]])
        x[sel] = a[sel, None, None] * matched + (1 - a[sel, None, None]) * x[sel]
    sel = torch.nonzero(torch.rand(n, generator=gen) < 0.4).flatten()
    k = 2 * _rint(gen, 7, 20) + 1
    amt = torch.rand(n, generator=gen) * 1.4 - 0.4
    if len(sel):
        xs = x[sel]
        x[sel] = xs + amt[sel, None, None] * (xs - _box_blur(xs, k))
    sel = torch.nonzero(torch.rand(n, generator=gen) < 0.2).flatten()
    amt = torch.rand(n, generator=gen) * 1.2 - 0.4
    if len(sel):
        xs = x[sel]
        x[sel] = xs + amt[sel, None, None] * (xs - _box_blur(xs, 3))
    sel = torch.nonzero(torch.rand(n, generator=gen) < 0.2).flatten()
    sigma = torch.rand(n, generator=gen) * 0.08
    if len(sel):
        noise = torch.randn((len(sel), *x.shape[1:]), generator=gen)
        x[sel] = x[sel] * (1 + noise * sigma[sel, None, None])
    return x.clamp(0.0, 1.0)


def group_balanced_weights(groups: np.ndarray, labels: np.ndarray, floor: int = 10) -> np.ndarray:
    """Sampling weights under which every group keeps its size but gives both classes equally.

    ``w_i = n_g / (c_g * max(n_{g,y_i}, floor))`` with ``c_g`` the number of classes present in
    group g: each (group, class) cell gets the weight 1/n_{g,class} (the rule in the issue),
    scaled by the group's size so that large acquisition groups are still seen as often as
    before; only the label stops depending on the group. The floor keeps a cell of 2 images
    from being drawn hundreds of times an epoch. Normalised to sum 1.
    """
    g = np.asarray(groups, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    w = np.zeros(len(g), dtype=np.float64)
    for grp in np.unique(g):
        m = g == grp
        n_g = int(m.sum())
        present = [c for c in (0, 1) if int((m & (y == c)).sum()) > 0]
        for c in present:
            mc = m & (y == c)
            w[mc] = n_g / (len(present) * max(int(mc.sum()), floor))
    out: np.ndarray = w / w.sum()
    return out
