"""``validate``: the active model and calibration on a site's own labelled studies, by stratum.

Input is the ``labels.csv`` shape (``path,label[,...]``, what ``cxr-triage answers export``
writes; see :mod:`training.data`). Each row is put in a stratum of every dimension in
:data:`DIMENSIONS`. Age, sex, view, manufacturer and modality come from the DICOM header when
the row points at a DICOM file (PatientAge/PatientBirthDate via
:func:`cxr_imaging.age.derive_age`, PatientSex, ViewPosition, Manufacturer, Modality), else
from the optional columns ``age_years, sex, view, manufacturer, modality``, else
``unknown``. ``population`` is the model's own check
(:func:`cxr_model.population.assess_population`), by header and by image: when the model
ships a distribution check (``ood.json``) each image's distance from the training
distribution comes from the scoring forward pass, and the record's ``distribution`` block
gives the share of the site's answers **outside by image** (what the model will not triage
whatever the header says).

Scoring is :func:`logits_and_distances` (the worker's forward pass, no TTA) and the
calibration's probability and threshold. For each stratum and overall: n, positives, AUC with
a bootstrap 95% CI (:func:`training.metrics.binary_metrics`), sensitivity and specificity at the
threshold with two-sided Clopper-Pearson intervals, and pass/fail against :class:`Targets`
(enough positives, and the interval's lower end at or above the sensitivity target).

Writes ``OUT/validation.json`` (the record), ``OUT/validation.html`` (for a clinical lead),
``OUT/predictions.csv`` and ``OUT/drift_reference.json`` (this sample's score and population
mix, for ``cxr-triage model register --reference``). Clinical decision support, not a diagnosis.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from cxr_common.clinical import DISCLAIMER
from cxr_common.drift import make_reference
from cxr_common.population import AGE_BANDS, PopulationPolicy, Targets, age_band
from cxr_imaging.age import Age, AgeSource, derive_age
from cxr_model import WEIGHTS_DIR, load_calibration, load_model, sha256_file
from cxr_model.population import (
    ImageDistance,
    Population,
    PopulationFields,
    assess_population,
    population_of,
)
from training.data import Sample, load_resized, load_samples
from training.metrics import binary_metrics

logger = logging.getLogger(__name__)

SCHEMA = "cxr-triage/validation/1"
DIMENSIONS = ("age_band", "sex", "view", "manufacturer", "modality", "population")
UNKNOWN = "unknown"
__all__ = [
    "AGE_BANDS",
    "DIMENSIONS",
    "RowStrata",
    "Targets",
    "age_band",
    "clopper_pearson",
    "data_hash",
    "render_html",
    "row_strata",
    "stratum_metrics",
    "validate",
]
DATA_HASH_METHOD = (
    "sha256 over the sorted lines '<path relative to the labels file>\\t<label>\\t"
    "<sha256 of the file>', joined by newlines"
)
_DICOM_SUFFIXES = {".dcm", ".dicom"}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes out of ``n`` (``n`` > 0)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, not k={k}, n={n}")
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2.0, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class RowStrata:
    """The stratum values of one labelled row and where they came from."""

    age_years: float | None
    age_band: str
    sex: str
    view: str
    manufacturer: str
    modality: str
    population: str
    source: str  # "dicom", "labels" or "none"
    outside_by_image: bool = False

    def value(self, dimension: str) -> str:
        return str(getattr(self, dimension))


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _sex(value: str) -> str:
    v = value.strip().upper()
    return {"MALE": "M", "FEMALE": "F", "OTHER": "O"}.get(v, v) if v else ""


def _header(path: Path) -> dict[str, Any] | None:
    if not _is_dicom(path):
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        logger.warning("cannot read the DICOM header of a labelled row: %s", type(exc).__name__)
        return None
    age = derive_age(ds)
    out: dict[str, Any] = {"age": age}
    for keyword in ("PatientSex", "ViewPosition", "Manufacturer", "Modality"):
        try:
            out[keyword] = _clean(ds.get(keyword))
        except Exception:  # noqa: BLE001 - a broken element counts as absent
            out[keyword] = ""
    return out


def _recorded_age(text: str) -> Age | None:
    try:
        years = float(text)
    except ValueError:
        return None
    if not math.isfinite(years) or not 0 <= years <= 130:
        return None
    return Age(years, AgeSource.RECORDED, "from the labels file")


def row_strata(
    path: Path,
    row: dict[str, str],
    population: Population | None,
    image: ImageDistance | None = None,
) -> RowStrata:
    """Stratum values for one row: DICOM header first, then the labels columns, else unknown;
    the population by header and (given ``image``) by image."""
    header = _header(path) or {}
    row = {k.strip().lower(): _clean(v) for k, v in row.items() if k}
    age: Age | None = header.get("age")
    if (age is None or not age.known) and row.get("age_years"):
        age = _recorded_age(row["age_years"]) or age

    def pick(keyword: str, column: str) -> str:
        return _clean(header.get(keyword)) or row.get(column, "")

    sex = _sex(pick("PatientSex", "sex"))
    view = pick("ViewPosition", "view").upper()
    manufacturer = pick("Manufacturer", "manufacturer")
    modality = pick("Modality", "modality").upper()
    fields = PopulationFields(
        age=age or Age(None, AgeSource.UNKNOWN, "no header and no age_years column"),
        view=view or None,
        modality=modality or None,
    )
    assessed = assess_population(fields, population, PopulationPolicy.ENFORCE, image=image)
    if header:
        source = "dicom"
    elif any(row.get(c) for c in ("age_years", "sex", "view", "manufacturer", "modality")):
        source = "labels"
    else:
        source = "none"
    return RowStrata(
        age_years=fields.age.years,
        age_band=age_band(fields.age.years),
        sex=sex or UNKNOWN,
        view=view or UNKNOWN,
        manufacturer=manufacturer or UNKNOWN,
        modality=modality or UNKNOWN,
        population=assessed.population.value,
        source=source,
        outside_by_image=assessed.outside_by_image,
    )


def _labels_file(labels: Path) -> Path | None:
    if labels.is_file():
        return labels
    if (labels / "labels.csv").is_file():
        return labels / "labels.csv"
    return None


def _csv_rows(labels: Path) -> dict[Path, dict[str, str]]:
    """Rows of a ``path,label`` labels file keyed by the path each sample gets."""
    path = _labels_file(labels)
    if path is None:
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {
            (path.parent / row["path"]).resolve(): row
            for row in csv.DictReader(fh)
            if row.get("path")
        }


def data_hash(samples: Sequence[Sample], base: Path) -> str:
    """Identity of a labelled set: :data:`DATA_HASH_METHOD`."""
    lines = []
    for s in samples:
        try:
            rel = s.path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            rel = s.path.name
        lines.append(f"{rel}\t{s.label}\t{sha256_file(s.path)}")
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def stratum_metrics(
    y: np.ndarray, prob: np.ndarray, threshold: float, targets: Targets, n_boot: int = 2000
) -> dict[str, Any]:
    """Counts, AUC (bootstrap CI), sensitivity/specificity (Clopper-Pearson) and pass/fail."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    m = binary_metrics(y, prob, threshold, n_boot=n_boot)
    c = m["confusion"]
    n_pos, n_neg = m["n_pos"], m["n_neg"]
    two_classes = n_pos > 0 and n_neg > 0
    out: dict[str, Any] = {
        "n": m["n"],
        "positives": n_pos,
        "negatives": n_neg,
        "auc": _finite(m["auc"]) if two_classes else None,
        "auc_ci95": [_finite(v) for v in m["auc_ci95"]] if two_classes and n_boot else None,
        "threshold": float(threshold),
        "confusion": c,
        "sensitivity": None,
        "sensitivity_ci": None,
        "specificity": None,
        "specificity_ci": None,
    }
    if n_pos:
        out["sensitivity"] = c["tp"] / n_pos
        out["sensitivity_ci"] = list(clopper_pearson(c["tp"], n_pos, targets.confidence))
    if n_neg:
        out["specificity"] = c["tn"] / n_neg
        out["specificity_ci"] = list(clopper_pearson(c["tn"], n_neg, targets.confidence))
    reasons: list[str] = []
    if n_pos < targets.min_positives:
        reasons.append(f"{n_pos} positives, fewer than the {targets.min_positives} required")
    sens_lo = out["sensitivity_ci"][0] if out["sensitivity_ci"] else None
    if sens_lo is None:
        reasons.append("no positives: sensitivity cannot be estimated")
    elif sens_lo < targets.sensitivity:
        reasons.append(
            f"sensitivity lower bound {sens_lo:.3f} is below the target {targets.sensitivity:.3f}"
        )
    if targets.specificity is not None:
        spec_lo = out["specificity_ci"][0] if out["specificity_ci"] else None
        if spec_lo is None:
            reasons.append("no negatives: specificity cannot be estimated")
        elif spec_lo < targets.specificity:
            reasons.append(
                f"specificity lower bound {spec_lo:.3f} is below the target "
                f"{targets.specificity:.3f}"
            )
    out["result"] = "fail" if reasons else "pass"
    out["reasons"] = reasons
    return out


def validate(
    labels: str | Path,
    flt: str | None = None,
    out: Path = Path("validation"),
    targets: Targets | None = None,
    model_dir: Path | None = None,
    calibration: Path | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
    n_boot: int = 2000,
    command: str = "",
) -> dict[str, Any]:
    """Validate the model on ``labels`` (rows kept by ``flt``); write and return the record."""
    targets = targets or Targets()
    labels = Path(labels)
    samples = load_samples(labels, flt)
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(samples)} labelled files are missing, e.g. {missing[0]}"
        )
    weights = model_dir or WEIGHTS_DIR
    model = load_model(weights, device)
    if calibration is None and model_dir is not None and (model_dir / "calibration.json").is_file():
        calibration = model_dir / "calibration.json"
    cal = load_calibration(calibration, model.contract.sha256)
    population = population_of(model.contract)

    rows = _csv_rows(labels)
    images = load_resized(samples, model.contract.input_size, cache_dir)
    logits, verdicts = logits_and_distances(model, images)
    check = model.distribution
    strata = [
        row_strata(s.path, rows.get(s.path.resolve(), {}), population, v)
        for s, v in zip(samples, verdicts, strict=True)
    ]
    prob = np.array([cal.probability(float(z)) for z in logits], dtype=np.float64)
    y = np.array([s.label for s in samples], dtype=np.int64)

    overall = stratum_metrics(y, prob, cal.threshold, targets, n_boot)
    per_stratum: list[dict[str, Any]] = []
    for dim in DIMENSIONS:
        values = np.array([r.value(dim) for r in strata])
        for value in sorted(set(values.tolist()), key=lambda v: (v == UNKNOWN, _order(dim, v))):
            mask = values == value
            per_stratum.append(
                {"dimension": dim, "value": value, "key": f"{dim}={value}"}
                | stratum_metrics(y[mask], prob[mask], cal.threshold, targets, n_boot)
            )

    base = labels.parent if labels.is_file() else labels
    sources = Counter(r.source for r in strata)
    notes = []
    if sources.get("none"):
        notes.append(
            f"{sources['none']} of {len(samples)} rows are not DICOM and have no "
            "age_years/sex/view/manufacturer/modality columns: their strata are 'unknown'."
        )
    n_image = sum(r.outside_by_image for r in strata)
    if check is not None and n_image:
        notes.append(
            f"{n_image} of {len(samples)} images ({n_image / len(samples):.1%}) are outside by "
            "image (unlike the validated population): the model will not triage them, "
            "whatever their headers say."
        )
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "model": {
            "name": model.contract.name,
            "version": model.contract.version,
            "sha256": model.contract.sha256,
            "dir": str(weights),
        },
        "calibration": {
            "version": cal.version,
            "model_sha256": cal.model_sha256,
            "threshold": cal.threshold,
            "path": str(calibration or WEIGHTS_DIR / "calibration.json"),
        },
        "population": None
        if population is None
        else {
            "description": population.description,
            "ages": population.age_label,
            "views": sorted(population.views),
            "modalities": sorted(population.modalities),
        },
        "data": {
            "labels": str(labels),
            "filter": flt or "",
            "n": len(samples),
            "hash": data_hash(samples, base),
            "hash_method": DATA_HASH_METHOD,
            "strata_source": dict(sorted(sources.items())),
        },
        "distribution": None
        if check is None
        else {
            "method": check.method,
            "threshold": check.threshold,
            "inversion_threshold": check.inversion_threshold,
            "n": len(samples),
            "outside_by_image": n_image,
            "share_outside_by_image": n_image / len(samples) if samples else 0.0,
        },
        "targets": asdict(targets),
        "interval": f"two-sided Clopper-Pearson {targets.confidence:.0%} for sensitivity and "
        f"specificity; percentile bootstrap 95% for AUC ({n_boot} resamples within class)",
        "overall": overall,
        "strata": per_stratum,
        "pass": overall["result"] == "pass",
        "notes": notes,
        "disclaimer": DISCLAIMER,
    }
    record["drift_reference"] = make_reference(
        [float(p) for p in prob],
        eligibility={"scored": len(samples)},
        population=Counter(r.population for r in strata),
        model_sha256=model.contract.sha256,
        calibration_version=cal.version,
        source=f"cxr-triage validate on {labels}" + (f" ({flt})" if flt else ""),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift_reference.json").write_text(
        json.dumps(record["drift_reference"], indent=2) + "\n", encoding="utf-8"
    )
    _write_predictions(out / "predictions.csv", samples, strata, logits, prob, cal.threshold)
    (out / "validation.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "validation.html").write_text(render_html(record), encoding="utf-8")
    return record


def logits_and_distances(
    model: Any, images: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, list[ImageDistance | None]]:
    """Raw logits and the image check's verdicts (distance from the training distribution
    and inversion score against their thresholds; None without a distribution check) of
    resized [0, 1] images, one forward pass per batch."""
    import torch

    logits: list[float] = []
    verdicts: list[ImageDistance | None] = []
    for i in range(0, len(images), batch_size):
        x = model.to_input(torch.from_numpy(images[i : i + batch_size]))
        for r in model.score_batch(x, with_heatmaps=False):
            logits.append(r.logit)
            verdicts.append(r.image)
    return np.asarray(logits, dtype=np.float32), verdicts


def _order(dimension: str, value: str) -> tuple[int, str]:
    if dimension == "age_band":
        labels = [b[0] for b in AGE_BANDS]
        return (labels.index(value) if value in labels else len(labels), value)
    return (0, value)


def _write_predictions(
    path: Path,
    samples: Sequence[Sample],
    strata: Sequence[RowStrata],
    logits: np.ndarray,
    prob: np.ndarray,
    threshold: float,
) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "logit", "probability", "flagged", *DIMENSIONS])
        for s, r, z, p in zip(samples, strata, logits, prob, strict=True):
            w.writerow(
                [str(s.path), s.label, f"{z:.5f}", f"{p:.5f}", int(p >= threshold)]
                + [r.value(d) for d in DIMENSIONS]
            )


# --- the HTML report -------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
.pass{color:#075e07;font-weight:bold}.fail{color:#a00;font-weight:bold}
.banner{background:#fff4cc;border:1px solid #d9b400;padding:.6em 1em;margin:1em 0}
.small{color:#555;font-size:.9em} code{font-size:.9em}
"""

_DIMENSION_TITLES = {
    "age_band": "Age band (completed years)",
    "sex": "Sex (PatientSex)",
    "view": "View (ViewPosition)",
    "manufacturer": "Manufacturer",
    "modality": "Modality",
    "population": "The model's validated population (its own check)",
}


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" ({_f(ci[0])}–{_f(ci[1])})"


def _row(label: str, m: dict[str, Any]) -> str:
    c = m["confusion"]
    sens = _f(m["sensitivity"]) + _ci(m["sensitivity_ci"])
    if m["positives"]:
        sens += f" <span class=small>{c['tp']}/{m['positives']}</span>"
    spec = _f(m["specificity"]) + _ci(m["specificity_ci"])
    if m["negatives"]:
        spec += f" <span class=small>{c['tn']}/{m['negatives']}</span>"
    result = m["result"]
    why = "; ".join(m["reasons"])
    return (
        f"<tr><td class=l>{html.escape(label)}</td><td>{m['n']}</td><td>{m['positives']}</td>"
        f"<td>{m['negatives']}</td><td>{_f(m['auc'])}{_ci(m['auc_ci95'])}</td>"
        f"<td>{sens}</td><td>{spec}</td>"
        f"<td class='l {result}'>{result.upper()}</td>"
        f"<td class=l>{html.escape(why)}</td></tr>"
    )


_HEAD = (
    "<tr><th class=l>stratum</th><th>n</th><th>positives</th><th>negatives</th>"
    "<th>AUC (95% CI)</th><th>sensitivity (95% CI)</th><th>specificity (95% CI)</th>"
    "<th class=l>result</th><th class=l>why</th></tr>"
)


def render_html(record: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external files) a clinical lead can read."""
    e = html.escape
    model, cal, data, t = record["model"], record["calibration"], record["data"], record["targets"]
    verdict = "PASS" if record["pass"] else "FAIL"
    spec_rule = (
        f", and the lower end of the specificity interval at least {t['specificity']:.2f}"
        if t.get("specificity") is not None
        else ""
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Site validation: {e(model['name'])} {e(model['version'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Site validation of {e(model['name'])} <code>{e(model['version'])}</code></h1>",
        f"<div class=banner><b>{e(record['disclaimer'])}</b> This report measures how the model "
        "ranked and flagged studies whose answers the site already knows. It does not change "
        "what the model does.</div>",
        f"<h2>Overall: <span class={verdict.lower()}>{verdict}</span></h2>",
        f"<p>{data['n']} labelled studies ({record['overall']['positives']} with pneumonia, "
        f"{record['overall']['negatives']} without), scored at the site threshold "
        f"<b>{cal['threshold']:.3f}</b> (calibration <code>{e(cal['version'])}</code>).</p>",
        f"<p>A stratum passes when it has at least <b>{t['min_positives']}</b> positives and the "
        f"lower end of its sensitivity interval is at least <b>{t['sensitivity']:.2f}</b>"
        f"{spec_rule}. Intervals: {e(record['interval'])}.</p>",
        f"<table>{_HEAD}{_row('all studies', record['overall'])}</table>",
    ]
    pop = record.get("population")
    if pop:
        parts.append(
            f"<p>The model was validated on: {e(pop['description'])} (ages {e(pop['ages'])}, "
            f"views {e('/'.join(pop['views']))}, modalities {e('/'.join(pop['modalities']))}). "
            "Under the default policy its scores for other patients are shown in shadow and do "
            "not triage.</p>"
        )
    for dim in DIMENSIONS:
        rows = [s for s in record["strata"] if s["dimension"] == dim]
        parts.append(f"<h3>{e(_DIMENSION_TITLES[dim])}</h3><table>{_HEAD}")
        parts.extend(_row(s["value"], s) for s in rows)
        parts.append("</table>")
    if record["notes"]:
        parts.append("<h3>Notes</h3><ul>")
        parts.extend(f"<li>{e(n)}</li>" for n in record["notes"])
        parts.append("</ul>")
    parts += [
        "<h3>Record</h3><table>",
        *(
            f"<tr><th class=l>{e(k)}</th><td class=l><code>{e(str(v))}</code></td></tr>"
            for k, v in (
                ("model sha256", model["sha256"]),
                ("calibration version", cal["version"]),
                ("labels", data["labels"] + (f" ({data['filter']})" if data["filter"] else "")),
                ("data hash", data["hash"]),
                ("created", record["created_at"]),
                ("command", record["command"]),
            )
        ),
        "</table>",
        f"<p class=small>{e(record['disclaimer'])}</p></body></html>",
    ]
    return "\n".join(parts) + "\n"
