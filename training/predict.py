"""``predict``: offline scoring of DICOM / image files with the shipped (or given) model."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxr_model import (
    DISCLAIMER,
    WEIGHTS_DIR,
    Calibration,
    load_calibration,
    load_model,
    render_overlay_png,
)

logger = logging.getLogger(__name__)

_SUFFIXES = {".dcm", ".dicom", ".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
            )
        else:
            out.append(p)
    return out


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def eligibility(path: Path) -> tuple[bool, list[str]]:
    """Chest-radiograph eligibility from the DICOM header; ordinary images are assumed CXRs."""
    if not _is_dicom(path):
        return True, ["not DICOM: assumed to be a frontal chest radiograph"]
    import pydicom

    from cxr_imaging import check_eligibility

    res = check_eligibility(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    return res.eligible, [res.reason] if res.reason else []


def predict_paths(
    paths: list[Path],
    model_dir: Path | None = None,
    calibration: Path | None = None,
    heatmap_dir: Path | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Score each file: calibrated probability, flag, eligibility, optional heatmap PNG."""
    from cxr_imaging import load_image

    model = load_model(model_dir or WEIGHTS_DIR, device)
    cal: Calibration | None = None
    if calibration is not None or model_dir is None:
        cal = load_calibration(calibration, model.contract.sha256)
    if heatmap_dir is not None:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for path in _expand(paths):
        rec: dict[str, Any] = {
            "path": str(path),
            "model_version": model.contract.version,
            "calibration_version": cal.version if cal else None,
        }
        try:
            eligible, reasons = eligibility(path)
            pixels = load_image(path).pixels
            (res,) = model.score_batch(
                model.preprocess(pixels)[None], with_heatmaps=heatmap_dir is not None
            )
        except Exception as exc:  # report per file, keep going  # noqa: BLE001
            logger.warning("cannot score %s: %s", path.name, exc)
            rec["error"] = f"{type(exc).__name__}: {exc}"
            results.append(rec)
            continue
        if cal is not None:
            prob, thr = cal.probability(res.logit), cal.threshold
        else:
            prob, thr = float(1 / (1 + np.exp(-res.logit))), model.contract.val_threshold
        rec.update(
            {
                "logit": res.logit,
                "probability": prob,
                "threshold": thr,
                "flagged": bool(prob >= thr) and eligible,
                "eligible": eligible,
                "reasons": reasons,
                "disclaimer": DISCLAIMER,
            }
        )
        if heatmap_dir is not None and res.cam is not None:
            name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16] + ".png"
            out = heatmap_dir / name
            out.write_bytes(render_overlay_png(pixels, res.cam))
            rec["heatmap"] = str(out)
        results.append(rec)
    return results
