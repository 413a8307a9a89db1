"""``predict``: offline scoring of DICOM / image files with the shipped (or given) model.

Each result carries the population check with the worker's rules
(:func:`cxr_model.population.assess_population`: the header and the image's distance from
the model's training distribution, from the same forward pass), under the policy of
``CXR_POPULATION_POLICY`` / ``CXR_UNKNOWN_AGE`` (or ``--population-policy`` /
``--unknown-age``). Offline there is no registry, so strata a site enabled do not widen
the population here. A score outside the population is marked ``triage: false`` (shadow)
and is never flagged, as in the worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_common.clinical import DISCLAIMER
from cxr_common.population import (
    POPULATION_POLICY_ENV,
    UNKNOWN_AGE_ENV,
    PopulationPolicy,
    UnknownAge,
)
from cxr_model import (
    WEIGHTS_DIR,
    Calibration,
    has_burned_in_annotation,
    load_calibration,
    load_model,
    render_overlay_png,
)
from cxr_model.population import PopulationFields, assess_population, population_of

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
    population_policy: PopulationPolicy | str | None = None,
    unknown_age: UnknownAge | str | None = None,
) -> list[dict[str, Any]]:
    """Score each file: calibrated probability, flag, eligibility, population, optional
    heatmap PNG.

    The flag, the population and the heatmap follow the worker's rules
    (:meth:`Calibration.score`, :func:`cxr_model.population.assess_population`,
    :mod:`cxr_model.heatmaps`); without a calibration record (a model given by ``--model``
    alone) the probability is the plain sigmoid at the model's validation threshold."""
    from cxr_imaging import load_image
    from cxr_imaging.age import Age, AgeSource

    policy = PopulationPolicy(
        population_policy or os.environ.get(POPULATION_POLICY_ENV) or PopulationPolicy.ENFORCE
    )
    unknown = UnknownAge(unknown_age or os.environ.get(UNKNOWN_AGE_ENV) or UnknownAge.IN_SCOPE)
    model = load_model(model_dir or WEIGHTS_DIR, device)
    population = population_of(model.contract)
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
        check = model.distribution
        image = res.image
        source: Any = header
        if header is None:  # an ordinary image file: nothing in a header, age unknown
            source = PopulationFields(Age(None, AgeSource.UNKNOWN, "not DICOM"))
        assessed = assess_population(source, population, policy, unknown, image=image)
        rec.update(
            {
                "logit": score.logit,
                "probability": score.probability,
                "score_interval": None
                if score.lower is None or score.upper is None
                else [score.lower, score.upper],
                "threshold": score.threshold,
                "flagged": score.flagged and assessed.triage,
                "eligible": eligible,
                "reasons": reasons,
                "population": assessed.population.value,
                "population_check": assessed.check.value,
                "population_reason": assessed.reason,
                "triage": assessed.triage,
                "image_distance": res.distance,
                "image_threshold": check.threshold if check is not None else None,
                "inversion_score": res.inversion,
                "inversion_threshold": check.inversion_threshold if check is not None else None,
                "image_decided_by": (image.decided_by or None) if image is not None else None,
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
