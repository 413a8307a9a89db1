"""The heatmap overlay's colouring, and reading the heatmap back out of a stored overlay.

One colouring rule, shared by the worker (:func:`cxr_model.heatmaps.render_overlay_png`
draws the stored overlay PNG with it) and the results sender (which redraws the overlay at
the source's resolution for the Secondary Capture and turns it into the Segmentation's
values), so the two can never disagree:

* a jet-like colour map (:func:`jet`) of the shown heat ``h`` in [0, 1];
* blended over the grey image with opacity ``OVERLAY_ALPHA * h``:
  ``rgb = grey * (1 - a) + jet(h) * a`` with ``a = 0.55 h`` (:func:`blend`).

The shown heat is the Grad-CAM map (min-max normalised per image) times the strength the
calibrated score allows (:func:`cxr_model.heatmaps.heatmap_strength`: 1 for a flagged
study, at most 0.7 otherwise).

Reading it back (:func:`heat_from_overlay`): the grey base adds the same amount to the three
channels, so the channel differences ``r - g`` and ``g - b`` depend on ``h`` alone
(``255 a (jet_r(h) - jet_g(h))`` and ``255 a (jet_g(h) - jet_b(h))``). The curve they trace
for ``h`` in [0, 1] never crosses itself, so each overlay pixel's differences give back its
``h``: the nearest of the 256 levels the PNG holds (it is 8-bit). Below about 2/255 the
differences round to zero and the heat reads as 0. The stored PNG is the only copy of the
map (no raw array is kept), and this is exact to that 8-bit step for every base, the
neutral grey field included.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

__all__ = [
    "HEAT_LEVELS",
    "OVERLAY_ALPHA",
    "blend",
    "has_burned_in_annotation",
    "heat_from_overlay",
    "jet",
]

#: How much of the colour map covers the image where the heat is 1.
OVERLAY_ALPHA = 0.55
#: The levels an 8-bit overlay can hold (h = k / 255).
HEAT_LEVELS = 256
#: Secondary Capture Image Storage and its multi-frame variants (.7.1 to .7.4).
_SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the header says text is burned into the pixels (BurnedInAnnotation YES),
    or when the image is a Secondary Capture or converted from something else
    (ConversionType present: a scanned film, a screenshot), whose pixels may carry text
    whatever BurnedInAnnotation says. Such pixels are never shown: the heatmap goes on a
    neutral grey field (the worker's overlay and the results objects follow this one rule)."""
    if "ConversionType" in ds or str(ds.get("SOPClassUID", "")).startswith(_SC_SOP_CLASS):
        return True
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def jet(v: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """A jet-like colour map: ``v`` in [0, 1] -> uint8 RGB (one more trailing axis)."""
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def blend(rgb: npt.NDArray[np.floating], heat: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """``rgb`` (H x W x 3, 0-255 float, the grey image) with ``heat`` (H x W, [0, 1]) in
    the colour map over it, opacity ``OVERLAY_ALPHA * heat``."""
    alpha = (OVERLAY_ALPHA * heat)[..., None]
    blended = rgb * (1.0 - alpha) + jet(heat).astype(np.float32) * alpha
    out: npt.NDArray[np.uint8] = np.clip(blended, 0, 255).astype(np.uint8)
    return out


@cache
def _difference_table() -> npt.NDArray[np.uint8]:
    """For every pair (r - g, g - b) in [-255, 255]^2: the index k of the nearest level."""
    levels = np.arange(HEAT_LEVELS, dtype=np.float64) / (HEAT_LEVELS - 1)
    colours = jet(levels).astype(np.float64)
    alpha = OVERLAY_ALPHA * levels
    d1 = alpha * (colours[:, 0] - colours[:, 1])
    d2 = alpha * (colours[:, 1] - colours[:, 2])
    grid = np.arange(-255, 256, dtype=np.float64)
    table = np.empty((grid.size, grid.size), dtype=np.uint8)
    for i, x in enumerate(grid):  # one row at a time: 511 x 256 distances
        dist = (x - d1)[None, :] ** 2 + (grid[:, None] - d2[None, :]) ** 2
        table[i] = np.argmin(dist, axis=1).astype(np.uint8)
    return table


def heat_from_overlay(overlay: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The shown heat (H x W float32 in [0, 1], steps of 1/255) of an overlay drawn by
    :func:`blend` (H x W x 3 uint8); see the module docstring."""
    array = np.asarray(overlay)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 overlay, got {array.shape} {array.dtype}")
    rgb = array.astype(np.int16)
    d1 = rgb[..., 0] - rgb[..., 1] + 255
    d2 = rgb[..., 1] - rgb[..., 2] + 255
    k = _difference_table()[d1, d2]
    heat: npt.NDArray[np.float32] = (k.astype(np.float32) / np.float32(HEAT_LEVELS - 1)).astype(
        np.float32
    )
    return heat
