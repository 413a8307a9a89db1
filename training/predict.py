"""``predict``: offline scoring of DICOM / image files with the shipped (or given) model."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_common.clinical import DISCLAIMER
from cxr_model import (
    WEIGHTS_DIR,
    Calibration,
    has_burned_in_annotation,
    load_calibration,
    load_model,
    render_overlay_png,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

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


def dicom_header(path: Path) -> Dataset | None:
    """The DICOM header of ``path`` (no pixel data), or None for an ordinary image file."""
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM" and path.suffix.lower() not in (".dcm", ".dicom"):
        return None
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def eligibility(header: Dataset | None) -> tuple[bool, list[str]]:
    """Chest-radiograph eligibility from the DICOM header; ordinary images are assumed CXRs."""
    if header is None:
        return True, ["not DICOM: assumed to be a frontal chest radiograph"]
    from cxr_imaging import check_eligibility

    res = check_eligibility(header)
    return res.eligible, [res.reason] if res.reason else []


def predict_paths(
    paths: list[Path],
    model_dir: Path | None = None,
    calibration: Path | None = None,
    heatmap_dir: Path | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Score each file: calibrated probability, flag, eligibility, optional heatmap PNG.

    The flag and the heatmap follow the worker's rules (:meth:`Calibration.score`,
    :mod:`cxr_model.heatmaps`); without a calibration record (a model given by ``--model``
    alone) the probability is the plain sigmoid at the model's validation threshold."""
    from cxr_imaging import load_image

    model = load_model(model_dir or WEIGHTS_DIR, device)
    cal: Calibration | None = None
    if calibration is not None or model_dir is None:
        cal = load_calibration(calibration, model.contract.sha256)
    rule = cal or Calibration.uncalibrated(model.contract.val_threshold, model.contract.sha256)
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
            header = dicom_header(path)
            eligible, reasons = eligibility(header)
            pixels = load_image(path).pixels
            (res,) = model.score_batch(
                model.preprocess(pixels)[None], with_heatmaps=heatmap_dir is not None
            )
        except Exception as exc:  # report per file, keep going  # noqa: BLE001
            logger.warning("cannot score %s: %s", path.name, exc)
            rec["error"] = f"{type(exc).__name__}: {exc}"
            results.append(rec)
            continue
        score = rule.score(res.logit, eligible=eligible)
        rec.update(
            {
                "logit": score.logit,
                "probability": score.probability,
                "score_interval": None
                if score.lower is None or score.upper is None
                else [score.lower, score.upper],
                "threshold": score.threshold,
                "flagged": score.flagged,
                "eligible": eligible,
                "reasons": reasons,
                "disclaimer": DISCLAIMER,
            }
        )
        if heatmap_dir is not None and res.cam is not None:
            burned_in = header is not None and has_burned_in_annotation(header)
            name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16] + ".png"
            out = heatmap_dir / name
            out.write_bytes(render_overlay_png(pixels, res.cam, burned_in=burned_in, score=score))
            rec["heatmap"] = str(out)
        results.append(rec)
    return results
