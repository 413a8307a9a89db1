"""Batch augmentation on resized [0, 1] images, aimed at acquisition differences."""

from __future__ import annotations

import math

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
