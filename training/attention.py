"""Where the heatmap points: the share of images whose Grad-CAM peak lies outside the thorax.

The thoracic region is a documented fixed box in normalised image coordinates,
:data:`THORAX_BOX` = x in [0.10, 0.90], y in [0.05, 0.85] of the squashed 224 px input
(Kermany films are squashed to a square, so the chest fills most of the frame; the box leaves
out the lateral edges, where markers and arms sit, the top band with neck/timestamp text and the
abdomen at the bottom). A peak outside it means the network's evidence for PNEUMONIA is
not in the lungs: markers, burned-in text, corners, the abdomen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: (x0, x1, y0, y1) as fractions of width and height.
THORAX_BOX = (0.10, 0.90, 0.05, 0.85)
THORAX_BOX_TEXT = "x in [0.10, 0.90], y in [0.05, 0.85] of the image (fractions, origin top left)"


def cam_peak(cam: np.ndarray) -> tuple[float, float]:
    """(x, y) of the map's maximum, as fractions of width and height (pixel centres)."""
    a = np.nan_to_num(np.asarray(cam, dtype=np.float64))
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2-D heatmap, got shape {a.shape}")
    iy, ix = np.unravel_index(int(np.argmax(a)), a.shape)
    return (ix + 0.5) / a.shape[1], (iy + 0.5) / a.shape[0]


def peak_outside_thorax(
    cam: np.ndarray, box: tuple[float, float, float, float] = THORAX_BOX
) -> bool:
    """True when the heatmap's peak lies outside ``box`` (x0, x1, y0, y1 fractions)."""
    x, y = cam_peak(cam)
    x0, x1, y0, y1 = box
    return not (x0 <= x <= x1 and y0 <= y <= y1)


@dataclass(frozen=True)
class AttentionSummary:
    n: int
    outside: int
    n_fp: int
    outside_fp: int
    n_flagged: int
    outside_flagged: int

    def share(self, part: int, whole: int) -> float:
        return part / whole if whole else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "box": THORAX_BOX_TEXT,
            "images": self.n,
            "peak_outside": self.outside,
            "share_outside": self.share(self.outside, self.n),
            "false_positives": self.n_fp,
            "fp_peak_outside": self.outside_fp,
            "fp_share_outside": self.share(self.outside_fp, self.n_fp),
            "flagged": self.n_flagged,
            "flagged_peak_outside": self.outside_flagged,
            "flagged_share_outside": self.share(self.outside_flagged, self.n_flagged),
        }


def summarise(
    cams: Sequence[np.ndarray], labels: np.ndarray, flagged: np.ndarray
) -> AttentionSummary:
    """Peaks outside the thorax: overall, among false positives and among flagged images."""
    out = np.array([peak_outside_thorax(c) for c in cams], dtype=bool)
    y = np.asarray(labels)
    f = np.asarray(flagged, dtype=bool)
    fp = f & (y == 0)
    return AttentionSummary(
        len(out),
        int(out.sum()),
        int(fp.sum()),
        int((out & fp).sum()),
        int(f.sum()),
        int((out & f).sum()),
    )
