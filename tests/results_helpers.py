"""Shared inputs for the cxr_results tests: a result, a heatmap, SR content look-ups."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from cxr_common.model_files import read_finding, shipped_model_dir
from cxr_imaging import decode_dataset
from cxr_results import ResultSummary, overlay_from_png

UID_ROOT = "1.2.826.0.1.3680043.10.1024.77"
SHA = "08c68e4ad00ab9e49a2c4da882154c0adb89770ced04acf18fbec8e334bd711a"


def summary(score: float = 0.8123, flagged: bool = True) -> ResultSummary:
    return ResultSummary(
        score=score,
        threshold=0.2834,
        flagged=flagged,
        model_name="cxr-pneumonia",
        model_version="1.0.0-lite0-strong-e8",
        weights_sha256=SHA,
        calibration_version="1.0.0-lite0-strong-e8-kermany-test-dev-1",
        finding=read_finding(shipped_model_dir()),
        population_note="Calibrated on adult PA/AP chest radiographs.",
    )


def heatmap(size: int = 14) -> np.ndarray:
    """A smooth blob left of centre, in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.2) ** 2)).astype(np.float32)


def _walk(items: object) -> list[Dataset]:
    found: list[Dataset] = []
    for item in items or []:  # type: ignore[attr-defined]
        found.append(item)
        found += _walk(item.get("ContentSequence"))
    return found


def sr_items(ds: Dataset) -> dict[str, Dataset]:
    """Every content item of the SR (depth first), keyed by concept name meaning; the first
    of a meaning wins (for a one-image report: that image's group)."""
    items: dict[str, Dataset] = {}
    for item in _walk(ds.ContentSequence):
        items.setdefault(str(item.ConceptNameCodeSequence[0].CodeMeaning), item)
    return items


def sr_groups(ds: Dataset) -> list[dict[str, Dataset]]:
    """The TID 1501 measurement groups of a TID 1500 report, each as :func:`sr_items`
    (plus the group container itself under "Measurement Group")."""
    groups = [
        item
        for item in _walk(ds.ContentSequence)
        if item.ValueType == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeValue == "125007"  # Measurement Group
    ]
    out = []
    for group in groups:
        items: dict[str, Dataset] = {"Measurement Group": group}
        for item in _walk(group.ContentSequence):
            items.setdefault(str(item.ConceptNameCodeSequence[0].CodeMeaning), item)
        out.append(items)
    return out


def sr_value(item: Dataset) -> object:
    """The value of a TEXT, NUM, CODE or IMAGE content item."""
    kind = item.ValueType
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "NUM":
        return float(item.MeasuredValueSequence[0].NumericValue)
    if kind == "CODE":
        code = item.ConceptCodeSequence[0]
        return (str(code.CodeValue), str(code.CodingSchemeDesignator))
    if kind == "IMAGE":
        ref = item.ReferencedSOPSequence[0]
        return (str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID))
    raise AssertionError(f"unexpected value type {kind}")


def overlay(source: Dataset, heat: np.ndarray | None = None) -> np.ndarray:
    """The heatmap overlay the worker would store for ``source`` (the product's own rule:
    :func:`cxr_model.heatmaps.render_overlay_png`, neutral field when burned in), decoded."""
    from cxr_model import CalibratedScore
    from cxr_model.heatmaps import has_burned_in_annotation, render_overlay_png

    flagged = CalibratedScore(logit=5.0, probability=0.99, threshold=0.5, flagged=True)
    png = render_overlay_png(
        decode_dataset(source).pixels,
        heatmap() if heat is None else heat,
        burned_in=has_burned_in_annotation(source),
        score=flagged,
    )
    return overlay_from_png(png)
