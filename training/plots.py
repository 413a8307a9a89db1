"""PNG plots for ``evaluate``: ROC, PR, reliability, confusion matrix, Grad-CAM grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_common.clinical import DISCLAIMER
from training.metrics import reliability_bins


def _save(fig: Any, path: Path) -> None:
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=7, color="grey")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_roc(y: np.ndarray, prob: np.ndarray, m: dict[str, Any], path: Path, title: str) -> None:
    fpr, tpr, _ = roc_curve(y, prob)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(
        fpr,
        tpr,
        lw=2,
        label=f"AUC {m['auc']:.3f} (95% CI {m['auc_ci95'][0]:.3f}-{m['auc_ci95'][1]:.3f})",
    )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter(
        [1 - m["specificity"]],
        [m["sensitivity"]],
        c="red",
        zorder=5,
        s=50,
        label=f"operating point t={m['threshold']:.3f}\nsens {m['sensitivity']:.3f}, "
        f"spec {m['specificity']:.3f}",
    )
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(y: np.ndarray, prob: np.ndarray, m: dict[str, Any], path: Path, title: str) -> None:
    prec, rec, _ = precision_recall_curve(y, prob)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(rec, prec, lw=2, label="precision-recall")
    ax.scatter([m["sensitivity"]], [m["ppv"]], c="red", zorder=5, label="operating point")
    ax.axhline(float(np.mean(y)), ls="--", c="grey", lw=1, label="prevalence")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_reliability(y: np.ndarray, prob: np.ndarray, ece: float, path: Path, title: str) -> None:
    bins = reliability_bins(y, prob)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for b in bins:
        ax.bar(
            b["lo"],
            b["frac_pos"],
            width=b["hi"] - b["lo"],
            align="edge",
            alpha=0.6,
            edgecolor="k",
            color="tab:blue",
        )
        ax.text(
            b["lo"] + 0.05, min(b["frac_pos"] + 0.02, 0.97), str(b["n"]), ha="center", fontsize=7
        )
    ax.plot(
        [b["mean_prob"] for b in bins],
        [b["frac_pos"] for b in bins],
        "o-",
        c="tab:red",
        label="observed vs mean predicted",
    )
    ax.set_xlabel("predicted P(pneumonia)")
    ax.set_ylabel("observed fraction pneumonia")
    ax.set_title(f"{title}\nECE {ece:.3f} (10 bins; counts on bars)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_confusion(c: dict[str, int], path: Path, title: str) -> None:
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(mat, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(mat[i, j]),
                ha="center",
                va="center",
                fontsize=14,
                color="white" if mat[i, j] > mat.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], ["not flagged", "flagged"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_title(title)
    _save(fig, path)


def plot_cam_grid(
    groups: dict[str, list[tuple[str, float, bytes]]], path: Path, title: str
) -> None:
    """``groups``: name -> [(caption, prob, overlay png bytes)] for TP/FP/FN/TN."""
    ncol = max((len(v) for v in groups.values()), default=1) or 1
    fig, axes = plt.subplots(
        len(groups), ncol, figsize=(2.4 * ncol, 2.6 * len(groups)), squeeze=False
    )
    for r, (name, items) in enumerate(groups.items()):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                caption, prob, png = items[c]
                ax.imshow(np.asarray(Image.open(io.BytesIO(png))))
                ax.set_title(f"{name} p={prob:.2f}\n{caption}", fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
