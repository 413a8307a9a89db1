"""``evaluate``: score a labelled set, write metrics.json, predictions.csv and PNG plots."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr_common.clinical import DISCLAIMER
from cxr_model import (
    WEIGHTS_DIR,
    CalibratedScore,
    Calibration,
    ScoringModel,
    has_burned_in_annotation,
    load_calibration,
    load_model,
    render_overlay_png,
)
from training import plots
from training.attention import summarise
from training.calibrate import interval_coverage
from training.data import Sample, load_resized, load_samples
from training.metrics import binary_metrics, expected_calibration_error
from training.predict import dicom_header

logger = logging.getLogger(__name__)

TTA_VIEWS = ((1.0, 0.0), (1.06, 0.0), (0.94, 0.0), (1.0, 4.0), (1.0, -4.0))  # (zoom, degrees)


def _view(x: torch.Tensor, zoom: float, degrees: float) -> torch.Tensor:
    if zoom == 1.0 and degrees == 0.0:
        return x
    a = math.radians(degrees)
    c, s = math.cos(a) / zoom, math.sin(a) / zoom
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, [x.shape[0], 1, *x.shape[-2:]], align_corners=False)
    out = F.grid_sample(x[:, None], grid, padding_mode="border", align_corners=False)
    return out[:, 0]


def model_logits(
    model: ScoringModel, images: np.ndarray, tta: bool = False, batch_size: int = 64
) -> np.ndarray:
    """Raw logits (fp32, no autocast) for resized [0, 1] images; TTA averages logits."""
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    total = np.zeros(len(images), dtype=np.float64)
    for zoom, deg in views:
        parts = []
        for i in range(0, len(images), batch_size):
            x = _view(torch.from_numpy(images[i : i + batch_size]), zoom, deg)
            parts.append(model.logits(model.to_input(x)))
        total += np.concatenate(parts)
    return (total / len(views)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _overlay(
    sample: Sample, image: np.ndarray, cam: np.ndarray | None, score: CalibratedScore
) -> bytes:
    """The worker's heatmap PNG (neutral field for burned-in DICOM; colour scale tied to the
    score), 256 px for the grid."""
    header = dicom_header(sample.path)
    burned_in = header is not None and has_burned_in_annotation(header)
    heat = cam if cam is not None else np.zeros((1, 1), np.float32)
    return render_overlay_png(image, heat, burned_in=burned_in, score=score, max_size=256)


def _cam_grid(
    model: ScoringModel,
    samples: list[Sample],
    images: np.ndarray,
    y: np.ndarray,
    prob: np.ndarray,
    flagged: np.ndarray,
    out: Path,
    scores: list[CalibratedScore],
    per_group: int = 6,
) -> dict[str, list[str]]:
    groups_idx = {
        "TP": np.flatnonzero((y == 1) & flagged),
        "FP": np.flatnonzero((y == 0) & flagged),
        "FN": np.flatnonzero((y == 1) & ~flagged),
        "TN": np.flatnonzero((y == 0) & ~flagged),
    }
    groups: dict[str, list[tuple[str, float, bytes]]] = {}
    listing: dict[str, list[str]] = {}
    for name, idx in groups_idx.items():
        # the most confident mistakes / hits first
        order = idx[np.argsort(-prob[idx])] if name in ("TP", "FP") else idx[np.argsort(prob[idx])]
        chosen = order[:per_group]
        listing[name] = [samples[i].path.name for i in order]
        if len(chosen) == 0:
            groups[name] = []
            continue
        batch = model.to_input(torch.from_numpy(images[chosen]))
        res = model.score_batch(batch, with_heatmaps=True)
        groups[name] = [
            (
                samples[i].path.name[:22],
                float(prob[i]),
                _overlay(samples[i], images[i], r.cam, scores[i]),
            )
            for i, r in zip(chosen, res, strict=True)
        ]
    plots.plot_cam_grid(groups, out / "gradcam_grid.png", "Grad-CAM: TP / FP / FN / TN")
    return listing


def _all_cams(model: ScoringModel, images: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """The product's heatmap (fast CAM where the head allows) for every image, in order."""
    cams: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        batch = model.to_input(torch.from_numpy(images[i : i + batch_size]))
        cams.extend(np.asarray(r.cam) for r in model.score_batch(batch, with_heatmaps=True))
    return cams


def _fp_grid(
    samples: list[Sample],
    images: np.ndarray,
    cams: list[np.ndarray],
    y: np.ndarray,
    prob: np.ndarray,
    flagged: np.ndarray,
    scores: list[CalibratedScore],
    out: Path,
    limit: int = 24,
) -> list[str]:
    """Every false positive (up to ``limit``), most confident first, in the product's overlay."""
    idx = np.flatnonzero((y == 0) & flagged)
    order = idx[np.argsort(-prob[idx])][:limit]
    rows = [order[i : i + 6] for i in range(0, len(order), 6)] or [order]
    groups = {
        f"FP {r + 1}": [
            (
                samples[i].path.name[:22],
                float(prob[i]),
                _overlay(samples[i], images[i], cams[i], scores[i]),
            )
            for i in row
        ]
        for r, row in enumerate(rows)
    }
    plots.plot_cam_grid(groups, out / "fp_grid.png", "False positives, most confident first")
    return [samples[i].path.name for i in order]


def evaluate(
    data: str,
    flt: str | None,
    out: Path,
    model_dirs: list[Path] | None = None,
    calibration: Path | None = None,
    no_calibration: bool = False,
    tta: bool = False,
    cache_dir: Path | None = Path("cache"),
    device: str | None = None,
    cams: bool = True,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(data, flt)
    images = load_resized(samples, 224, cache_dir)
    y = np.array([s.label for s in samples], dtype=np.int64)
    shipped = not model_dirs
    dirs = model_dirs or [WEIGHTS_DIR]
    models = [load_model(d, device) for d in dirs]
    if any(m.contract.input_size != 224 for m in models):
        images = load_resized(samples, models[0].contract.input_size, cache_dir)
    logits = np.mean([model_logits(m, images, tta) for m in models], axis=0)
    raw_prob = _sigmoid(logits)
    primary = models[0]
    cal: Calibration | None = None
    if not no_calibration and len(models) == 1:
        if calibration is not None:
            cal = load_calibration(calibration, primary.contract.sha256)
        elif shipped:
            cal = load_calibration(None, primary.contract.sha256)
    val_thr = float(np.mean([m.contract.val_threshold for m in models]))
    rule = cal or Calibration.uncalibrated(val_thr)
    scores = [rule.score(float(z)) for z in logits]
    prob = np.array([s.probability for s in scores])
    flagged = np.array([s.flagged for s in scores], dtype=bool)
    threshold = rule.threshold
    subtypes = [s.subtype for s in samples]
    metrics = binary_metrics(y, prob, threshold, subtypes)
    at_val = binary_metrics(y, raw_prob, val_thr, subtypes, n_boot=0)
    metrics["uncalibrated"] = {
        "ece": expected_calibration_error(y, raw_prob),
        "val_threshold": val_thr,
        "at_val_threshold": {
            k: at_val[k]
            for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv", "confusion")
        },
    }
    metrics.update(
        {
            "data": str(data),
            "filter": flt or "",
            "models": [
                {"dir": str(d), "version": m.contract.version, "sha256": m.contract.sha256}
                for d, m in zip(dirs, models, strict=True)
            ],
            "tta": tta,
            "calibration": None
            if cal is None
            else {
                "version": cal.version,
                "temperature": cal.temperature,
                "bias": cal.bias,
                "threshold": cal.threshold,
                "logit_threshold": cal.logit_threshold,
            },
            "threshold_source": "calibration" if cal is not None else "model val_threshold",
            "score_interval": None
            if cal is None or cal.interval is None
            else interval_coverage(cal, y, logits),
            "disclaimer": DISCLAIMER,
        }
    )
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subtype", "logit", "probability", "flagged"])
        for s, z, p, f in zip(samples, logits, prob, flagged, strict=True):
            w.writerow([str(s.path), s.label, s.subtype, f"{z:.5f}", f"{p:.5f}", int(f)])
    title = f"{Path(data).name} {flt or ''}".strip()
    plots.plot_roc(y, prob, metrics, out / "roc.png", f"ROC - {title}")
    plots.plot_pr(y, prob, metrics, out / "pr.png", f"PR - {title}")
    plots.plot_reliability(
        y, prob, metrics["ece"], out / "reliability.png", f"Reliability - {title}"
    )
    plots.plot_confusion(
        metrics["confusion"], out / "confusion.png", f"t={threshold:.3f} - {title}"
    )
    if cams and len(models) == 1:
        metrics["cases"] = _cam_grid(primary, samples, images, y, prob, flagged, out, scores)
        cams_all = _all_cams(primary, images)
        metrics["attention"] = summarise(cams_all, y, flagged).to_json()
        metrics["false_positive_grid"] = _fp_grid(
            samples, images, cams_all, y, prob, flagged, scores, out
        )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
