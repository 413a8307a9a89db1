"""Acquisition-group audit: cluster images by label-free ImageNet features.

Every image is embedded with the offline ImageNet EfficientNet-Lite0 weights *before any
fine-tuning* (so the clusters know nothing of the labels): the global-average-pooled
``conv_head`` features (1280-d), L2-normalised. k-means (k = 10, fixed seed) is fitted on
``split=train`` only; every other row is assigned to its nearest centroid. The audit then
tabulates the class balance per group (train) and the shipped model's errors per group
(test, with the shipped calibration), because a group whose label is nearly constant in
train is an acquisition shortcut the network can learn instead of the lungs.

``cxr-triage groups --data labels.csv --out DIR`` writes ``groups.json`` (centroids, per-image
assignment, table) and ``groups.md`` (the Markdown table for the model card).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_K = 10
DEFAULT_SEED = 20261123
FEATURES = (
    "ImageNet EfficientNet-Lite0 (before fine-tuning), pooled conv_head (bf16 autocast), "
    "L2-normalised"
)


def embed_images(
    images: np.ndarray, net: torch.nn.Module | None = None, batch_size: int = 64
) -> np.ndarray:
    """Resized [0, 1] images (N, S, S) -> L2-normalised ImageNet features (N, D), float32."""
    from cxr_model.preprocess import scale_tensor

    if net is None:
        from training.backbones import make_network

        net, _, _ = make_network("lite0")
    net.eval()
    net = net.to(memory_format=torch.channels_last)
    feats = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(images), batch_size):
            x = scale_tensor(torch.from_numpy(images[i : i + batch_size]), 3)
            x = x.contiguous(memory_format=torch.channels_last)
            f = net.forward_features(x)  # type: ignore[operator]
            feats.append(f.float().mean(dim=(2, 3)))
            if i // batch_size % 10 == 0:
                logger.info("embedded %d / %d", i + len(x), len(images))
    out = torch.cat(feats) if feats else torch.zeros(0, 1)
    out = torch.nn.functional.normalize(out, dim=1)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def fit_centroids(features: np.ndarray, k: int = DEFAULT_K, seed: int = DEFAULT_SEED) -> np.ndarray:
    """k-means centroids (k, D) on ``features`` (deterministic for a given seed)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, random_state=seed, n_init=10)
    km.fit(features.astype(np.float64))
    centres = np.asarray(km.cluster_centers_, dtype=np.float64)
    # stable group numbering: order clusters by size (largest = 0), then by first member
    labels = km.labels_
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == c).min() if sizes[c] else 10**9 for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    return np.ascontiguousarray(centres[order], dtype=np.float32)


def assign(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (squared Euclidean) for each row -> int64 group ids."""
    f = features.astype(np.float64)
    c = centroids.astype(np.float64)
    d = (f * f).sum(1)[:, None] - 2.0 * f @ c.T + (c * c).sum(1)[None, :]
    return np.asarray(d.argmin(axis=1), dtype=np.int64)


@dataclass(frozen=True)
class GroupRow:
    group: int
    train_normal: int
    train_pneumonia: int
    test_normal: int
    test_pneumonia: int
    test_fp: int
    test_fn: int
    test_normal_raw_over_half: int

    @property
    def train_pneumonia_share(self) -> float:
        n = self.train_normal + self.train_pneumonia
        return self.train_pneumonia / n if n else float("nan")

    @property
    def test_specificity(self) -> float:
        return 1.0 - self.test_fp / self.test_normal if self.test_normal else float("nan")

    @property
    def test_sensitivity(self) -> float:
        p = self.test_pneumonia
        return 1.0 - self.test_fn / p if p else float("nan")


def group_table(
    groups: np.ndarray,
    labels: np.ndarray,
    splits: Sequence[str],
    k: int,
    flagged: np.ndarray | None = None,
    raw_prob: np.ndarray | None = None,
) -> list[GroupRow]:
    """Per-group class balance (train) and errors (test).

    ``flagged`` and ``raw_prob`` cover all rows (only the test rows are read)."""
    sp = np.asarray(splits)
    rows = []
    for g in range(k):
        m = groups == g
        tr, te = m & (sp == "train"), m & (sp == "test")
        fp = fn = over = 0
        if flagged is not None:
            fp = int((te & (labels == 0) & flagged).sum())
            fn = int((te & (labels == 1) & ~flagged).sum())
        if raw_prob is not None:
            over = int((te & (labels == 0) & (raw_prob > 0.5)).sum())
        rows.append(
            GroupRow(
                g,
                int((tr & (labels == 0)).sum()),
                int((tr & (labels == 1)).sum()),
                int((te & (labels == 0)).sum()),
                int((te & (labels == 1)).sum()),
                fp,
                fn,
                over,
            )
        )
    return rows


def _fmt(x: float, nd: int = 2) -> str:
    return "—" if x != x else f"{x:.{nd}f}"


def markdown_table(rows: Sequence[GroupRow], model: str = "") -> str:
    """The audit as a Markdown table (one line per group; the worst test specificity among
    groups with at least 5 test normals, :func:`worst_group_specificity`, is marked)."""
    worst_group, _ = worst_group_specificity(rows)
    lines = [
        f"| group | train NORMAL | train PNEUMONIA | train % pneumonia | test NORMAL | "
        f"test PNEUMONIA | test FP | test spec | test FN | test sens | "
        f"test NORMAL raw p>0.5{' (' + model + ')' if model else ''} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spec = _fmt(r.test_specificity)
        if r.group == worst_group:
            spec = f"**{spec}** (worst)"
        lines.append(
            f"| {r.group} | {r.train_normal} | {r.train_pneumonia} | "
            f"{_fmt(100 * r.train_pneumonia_share, 0)} | {r.test_normal} | {r.test_pneumonia} | "
            f"{r.test_fp} | {spec} | {r.test_fn} | {_fmt(r.test_sensitivity)} | "
            f"{r.test_normal_raw_over_half} |"
        )
    return "\n".join(lines) + "\n"


def worst_group_specificity(rows: Sequence[GroupRow], min_normals: int = 5) -> tuple[int, float]:
    """(group, specificity) of the group with the lowest test specificity (>= min_normals)."""
    cands = [(r.test_specificity, r.group) for r in rows if r.test_normal >= min_normals]
    if not cands:
        return -1, float("nan")
    spec, g = min(cands)
    return g, spec


def load_assignments(path: Path) -> dict[str, int]:
    """``groups.json`` -> {image path relative to the data CSV: group}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {str(k): int(v) for k, v in data["assignments"].items()}


def run_groups(
    data: str,
    out: Path,
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
    model_dir: Path | None = None,
    calibration: Path | None = None,
    cache_dir: Path | None = Path("cache"),
    score: bool = True,
) -> dict[str, Any]:
    """Embed all rows, fit on split=train, assign the rest, tabulate; write JSON + Markdown."""
    import csv

    from training.data import load_resized, load_samples

    out.mkdir(parents=True, exist_ok=True)
    csv_path = Path(data) if Path(data).is_file() else Path(data) / "labels.csv"
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label") in ("0", "1")]
    samples = load_samples(csv_path, None)
    if len(samples) != len(rows):
        raise ValueError("labels.csv rows and samples disagree")
    splits = [r.get("split", "") for r in rows]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    images = load_resized(samples, 224, cache_dir)
    feat_file = out / "features.npy"
    if feat_file.is_file():
        feats = np.load(feat_file)
    else:
        feats = embed_images(images)
        np.save(feat_file, feats)
    train_idx = np.flatnonzero(np.asarray(splits) == "train")
    centroids = fit_centroids(feats[train_idx], k, seed)
    groups = assign(feats, centroids)
    flagged = raw = None
    model_info: dict[str, Any] = {}
    if score:
        from cxr_model import load_calibration, load_model
        from training.evaluate import model_logits

        test_idx = np.flatnonzero(np.asarray(splits) == "test")
        model = load_model(model_dir)
        cal = load_calibration(calibration, model.contract.sha256)
        logits = model_logits(model, images[test_idx])
        flagged = np.zeros(len(rows), dtype=bool)
        raw = np.zeros(len(rows), dtype=np.float64)
        cal_p = np.array([cal.probability(z) for z in logits])
        flagged[test_idx] = cal_p >= cal.threshold
        raw[test_idx] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        model_info = {
            "version": model.contract.version,
            "sha256": model.contract.sha256,
            "calibration": cal.version,
            "threshold": cal.threshold,
        }
    table = group_table(groups, labels, splits, k, flagged, raw)
    wg, ws = worst_group_specificity(table)
    md = markdown_table(table, str(model_info.get("version", "")))
    result: dict[str, Any] = {
        "features": FEATURES,
        "k": k,
        "seed": seed,
        "fitted_on": "split=train",
        "model": model_info,
        "worst_group": {"group": wg, "test_specificity": ws},
        "table": [{**r.__dict__, "test_specificity": r.test_specificity} for r in table],
        "centroids": centroids.round(6).tolist(),
        "assignments": {r["path"]: int(g) for r, g in zip(rows, groups, strict=True)},
        "site_fold": {r["path"]: r.get("site_fold", "") for r in rows if r.get("site_fold")},
    }
    (out / "groups.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    (out / "groups.md").write_text(md, encoding="utf-8")
    return result
