"""``cxr-triage validate`` on a constructed labelled set, checked against scikit-learn/scipy.

The set mixes generated DICOMs (fixture pixels with chosen headers), plain JPEG rows with and
without stratum columns, the shipped Kermany-derived DICOMs and three real archive DICOMs
(RSNA, NIH). It is scored with the real shipped model; nothing is mocked.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score

from tests.dicom_factory import make_dataset, write
from training.cli import main as training_main
from training.data import Sample
from training.predict import predict_paths
from training.validate import (
    DIMENSIONS,
    Targets,
    age_band,
    clopper_pearson,
    data_hash,
    stratum_metrics,
)

# The labelled set holds invalid dates and bare-number ages on purpose (pydicom warns
# reading them; validate never raises for them).
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "kermany"
SAMPLES = REPO / "cxr_triage" / "samples"
TARGETS = "sensitivity=0.3,min_positives=3"

# (age header, expected band, expected population) for the generated DICOMs, by index
GEN_AGES = [
    ({"PatientAge": "003Y"}, "1-5", "in_scope"),
    ({"PatientAge": "059Y"}, "18-64", "outside"),
    ({"PatientAge": "006M"}, "<1", "outside"),
    ({"PatientAge": "70"}, "65+", "outside"),  # non-conformant bare number
    ({"PatientBirthDate": "20150101", "StudyDate": "20250601"}, "6-17", "outside"),
    ({"PatientAge": "005Y"}, "1-5", "in_scope"),
    ({}, "unknown", "unknown"),
    ({"PatientAge": "002Y"}, "1-5", "in_scope"),
    ({"PatientAge": "040Y"}, "18-64", "outside"),
]
# rows for JPEGs with columns (even index); odd-index JPEG rows have none
JPEG_COLUMNS = [
    {"age_years": "2.5", "sex": "female", "view": "ap", "manufacturer": "Gamma", "modality": "cr"},
    {"age_years": "30", "sex": "M", "view": "PA", "manufacturer": "Gamma", "modality": "DX"},
    {"age_years": "", "sex": "F", "view": "", "manufacturer": "", "modality": ""},
    {"age_years": "4", "sex": "", "view": "PA", "manufacturer": "Delta", "modality": "CR"},
    {"age_years": "70", "sex": "M", "view": "PA", "manufacturer": "Delta", "modality": "CR"},
]
ARCHIVE = [  # file, label, expected strata (age band, sex, view, manufacturer, modality, pop)
    ("rsna-opacity-1.dcm", 1, ("6-17", "F", "AP", "unknown", "CR", "outside")),
    ("rsna-normal-1.dcm", 0, ("18-64", "F", "PA", "unknown", "CR", "outside")),
    ("nih-nofinding-1.dcm", 0, ("65+", "M", "unknown", "unknown", "DX", "outside")),
]


def _fixture_images() -> list[tuple[Path, int]]:
    out = []
    for p in sorted(FIXTURES.rglob("*.jpeg")):
        out.append((p, 1 if p.parent.name == "PNEUMONIA" else 0))
    assert len(out) == 9
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """labels.csv + the expected strata of every row, written by hand (not by the code)."""
    root = tmp_path_factory.mktemp("site")
    rows: list[dict[str, Any]] = []
    for i, (jpeg, label) in enumerate(_fixture_images()):
        pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
        view, modality = ("PA", "CR") if i % 2 == 0 else ("AP", "DX")
        sex, maker = ("F", "Acme") if i % 3 else ("M", "Beta")
        ds = make_dataset(pixels, view=view, modality=modality)
        ds.PatientSex = sex
        ds.Manufacturer = maker
        header, band, pop = GEN_AGES[i]
        for k, v in header.items():
            setattr(ds, k, v)
        path = write(ds, root / "dicom" / f"gen-{i}.dcm")
        rows.append(
            {"path": f"dicom/{path.name}", "label": label, "file": path}
            | dict(zip(DIMENSIONS, (band, sex, view, maker, modality, pop), strict=True))
        )
        # the same pixels as a JPEG row, with stratum columns on even rows
        row: dict[str, Any] = {"path": str(jpeg), "label": label, "file": jpeg}
        if i % 2 == 0:
            cols = JPEG_COLUMNS[i // 2]
            row["columns"] = cols
            age = float(cols["age_years"]) if cols["age_years"] else None
            in_range = age is not None and 1 <= age < 6
            pop = "unknown" if age is None else ("in_scope" if in_range else "outside")
            sex_ = {"female": "F"}.get(cols["sex"], cols["sex"]) or "unknown"
            row |= dict(
                zip(
                    DIMENSIONS,
                    (
                        age_band(age),
                        sex_,
                        cols["view"].upper() or "unknown",
                        cols["manufacturer"] or "unknown",
                        cols["modality"].upper() or "unknown",
                        pop,
                    ),
                    strict=True,
                )
            )
        else:
            row |= dict.fromkeys(DIMENSIONS, "unknown")
        rows.append(row)
    for name in ("normal-1", "normal-2", "pneumonia-1", "pneumonia-2"):
        path = SAMPLES / "derived" / f"kermany-{name}.dcm"
        strata = ("unknown", "unknown", "PA", "cxr-triage sample wrapper", "CR", "unknown")
        rows.append(
            {"path": str(path), "label": int(name.startswith("pneumonia")), "file": path}
            | dict(zip(DIMENSIONS, strata, strict=True))
        )
    for name, label, strata in ARCHIVE:
        path = SAMPLES / name
        rows.append(
            {"path": str(path), "label": label, "file": path}
            | dict(zip(DIMENSIONS, strata, strict=True))
        )
    columns = ["path", "label", "age_years", "sex", "view", "manufacturer", "modality"]
    labels = root / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({"path": r["path"], "label": r["label"]} | r.get("columns", {}))
    return labels, rows


@pytest.fixture(scope="module")
def run(labelled: tuple[Path, list[dict[str, Any]]]) -> tuple[int, Path]:
    labels, _ = labelled
    out = labels.parent / "out"
    args = ["validate", "--labels", str(labels), "--out", str(out), "--targets", TARGETS]
    code = training_main([*args, "--n-boot", "200", "--cache-dir", "", "--device", "cpu"])
    return code, out


@pytest.fixture(scope="module")
def record(run: tuple[int, Path]) -> dict[str, Any]:
    return dict(json.loads((run[1] / "validation.json").read_text()))


def _probabilities(out: Path) -> dict[str, float]:
    with (out / "predictions.csv").open(newline="") as fh:
        return {r["path"]: float(r["probability"]) for r in csv.DictReader(fh)}


def test_scores_are_the_shipped_models(
    run: tuple[int, Path], labelled: tuple[Path, list[dict[str, Any]]], record: dict[str, Any]
) -> None:
    _, out = run
    _, rows = labelled
    got = _probabilities(out)
    assert len(got) == len(rows)
    files = [rows[0]["file"], rows[1]["file"], SAMPLES / "rsna-opacity-1.dcm"]
    independent = {r["path"]: r["probability"] for r in predict_paths(files, device="cpu")}
    for f in files:
        key = next(k for k in got if Path(k).resolve() == Path(f).resolve())
        assert got[key] == pytest.approx(independent[str(f)], abs=2e-4)
    model = json.loads((REPO / "cxr_model" / "weights" / "model.json").read_text())
    cal = json.loads((REPO / "cxr_model" / "weights" / "calibration.json").read_text())
    assert record["model"]["sha256"] == model["sha256"]
    assert record["calibration"]["version"] == cal["version"]
    assert record["overall"]["threshold"] == cal["threshold"]


def _expected(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    exp: dict[str, Any] = {
        "n": len(y),
        "positives": n_pos,
        "negatives": n_neg,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "auc": roc_auc_score(y, p) if n_pos and n_neg else None,
        "sensitivity": recall_score(y, pred, zero_division=0) if n_pos else None,
        "specificity": recall_score(1 - y, 1 - pred, zero_division=0) if n_neg else None,
    }
    if n_pos:
        ci = binomtest(int(tp), n_pos).proportion_ci(confidence_level=0.95, method="exact")
        exp["sensitivity_ci"] = [ci.low, ci.high]
    if n_neg:
        ci = binomtest(int(tn), n_neg).proportion_ci(confidence_level=0.95, method="exact")
        exp["specificity_ci"] = [ci.low, ci.high]
    lo = exp.get("sensitivity_ci", [None])[0]
    exp["result"] = "pass" if n_pos >= 3 and lo is not None and lo >= 0.3 else "fail"
    return exp


def _check(got: dict[str, Any], exp: dict[str, Any]) -> None:
    for k in ("n", "positives", "negatives", "confusion", "result"):
        assert got[k] == exp[k], k
    for k in ("auc", "sensitivity", "specificity"):
        if exp[k] is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(exp[k], abs=1e-12), k
    for k in ("sensitivity_ci", "specificity_ci"):
        if k in exp:
            assert got[k] == pytest.approx(exp[k], abs=1e-9), k
        else:
            assert got[k] is None
    if got["auc"] is not None and got["auc_ci95"] is not None:
        lo, hi = got["auc_ci95"]
        assert lo <= got["auc"] + 1e-12
        assert got["auc"] - 1e-12 <= hi


def test_overall_and_every_stratum_match_sklearn(
    record: dict[str, Any], run: tuple[int, Path], labelled: tuple[Path, list[dict[str, Any]]]
) -> None:
    _, rows = labelled
    probs = _probabilities(run[1])
    by_file = {Path(k).resolve(): v for k, v in probs.items()}
    p = np.array([by_file[Path(r["file"]).resolve()] for r in rows])
    y = np.array([r["label"] for r in rows])
    t = record["calibration"]["threshold"]
    _check(record["overall"], _expected(y, p, t))
    expected_keys = {f"{d}={r[d]}" for r in rows for d in DIMENSIONS}
    assert {s["key"] for s in record["strata"]} == expected_keys
    for s in record["strata"]:
        mask = np.array([r[s["dimension"]] == s["value"] for r in rows])
        _check(s, _expected(y[mask], p[mask], t))
    # the set was built so that the threshold matters: the RSNA positive is missed
    assert record["overall"]["confusion"]["fn"] >= 1
    assert any(s["result"] == "pass" for s in record["strata"])
    assert any(s["result"] == "fail" for s in record["strata"])


def test_exit_status_follows_the_overall_result(
    run: tuple[int, Path], record: dict[str, Any]
) -> None:
    assert run[0] == (0 if record["pass"] else 1)
    assert record["pass"] is (record["overall"]["result"] == "pass")


def test_record_fields(record: dict[str, Any], labelled: tuple[Path, list[dict[str, Any]]]) -> None:
    labels, rows = labelled
    assert record["schema"] == "cxr-triage/validation/1"
    assert record["targets"] == {
        "sensitivity": 0.3,
        "min_positives": 3,
        "specificity": None,
        "confidence": 0.95,
    }
    assert record["command"].startswith("cxr-triage")
    assert record["created_at"].endswith("+00:00")
    assert record["data"]["n"] == len(rows)
    assert record["data"]["strata_source"] == {"dicom": 16, "labels": 5, "none": 4}
    assert record["population"]["ages"] == "1–5 y"
    assert "Clinical decision support" in record["disclaimer"]
    # the data hash, recomputed from the documented method
    lines = []
    for r in rows:
        f = Path(r["file"]).resolve()
        try:
            rel = f.relative_to(labels.parent.resolve()).as_posix()
        except ValueError:
            rel = f.name
        lines.append(f"{rel}\t{r['label']}\t{hashlib.sha256(f.read_bytes()).hexdigest()}")
    expected = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    assert record["data"]["hash"] == expected


def test_data_hash_depends_on_labels_and_content_not_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    h = data_hash([Sample(a, 0), Sample(b, 1)], tmp_path)
    assert data_hash([Sample(b, 1), Sample(a, 0)], tmp_path) == h
    assert data_hash([Sample(a, 1), Sample(b, 1)], tmp_path) != h
    b.write_bytes(b"TWO")
    assert data_hash([Sample(a, 0), Sample(b, 1)], tmp_path) != h


def test_html_report_is_self_contained_and_readable(run: tuple[int, Path]) -> None:
    page = (run[1] / "validation.html").read_text()
    assert page.startswith("<!doctype html>")
    for forbidden in ("<script", "src=", "http://", "https://", "<link"):
        assert forbidden not in page
    assert page.count("<table") == 1 + len(DIMENSIONS) + 1  # overall, one per dimension, record
    assert "Clinical decision support" in page
    assert "Age band" in page
    assert "rsna" not in page.lower()  # no file names (they can carry patient IDs)
    assert "PASS" in page
    assert "FAIL" in page


def test_bad_input_is_refused_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nnot-there.jpeg,1\n")
    assert training_main(["validate", "--labels", str(labels), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    args = ["validate", "--labels", str(labels), "--targets", "sensitivty=0.9"]
    assert training_main(args) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert training_main(["validate", "--labels", str(tmp_path / "nope.csv")]) == 2


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (10, 10), (91, 97), (1, 1)])
def test_clopper_pearson_matches_scipy_binomtest(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)
    ci90 = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
    assert clopper_pearson(k, n, 0.90) == pytest.approx((ci90.low, ci90.high), abs=1e-10)


def test_clopper_pearson_known_values() -> None:
    # 0/n: upper end 1 - (alpha/2)^(1/n); n/n: lower end (alpha/2)^(1/n)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))
    assert clopper_pearson(72, 72)[0] == pytest.approx(0.025 ** (1 / 72))
    assert clopper_pearson(72, 72)[0] >= 0.95 > clopper_pearson(71, 71)[0]
    with pytest.raises(ValueError, match="n > 0"):
        clopper_pearson(0, 0)


def test_stratum_rules() -> None:
    y = np.array([1] * 10 + [0] * 5)
    p = np.array([0.9] * 9 + [0.1] + [0.1] * 5)
    m = stratum_metrics(y, p, 0.5, Targets(sensitivity=0.5, min_positives=10), n_boot=0)
    assert m["result"] == "pass"
    assert m["auc_ci95"] is None
    m = stratum_metrics(y, p, 0.5, Targets(sensitivity=0.9, min_positives=11), n_boot=0)
    assert m["result"] == "fail"
    assert len(m["reasons"]) == 2
    only_neg = stratum_metrics(np.zeros(4), np.full(4, 0.2), 0.5, Targets(), n_boot=0)
    assert only_neg["auc"] is None
    assert only_neg["sensitivity"] is None
    assert only_neg["specificity"] == 1.0
    assert "no positives" in " ".join(only_neg["reasons"])
    m = stratum_metrics(y, p, 0.5, Targets(0.5, 1, specificity=0.99), n_boot=0)
    assert m["result"] == "fail"
    assert "specificity lower bound" in m["reasons"][0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Targets()),
        ("sensitivity=0.9, min-positives=30", Targets(0.9, 30)),
        ("specificity=0.8,confidence=0.9", Targets(specificity=0.8, confidence=0.9)),
    ],
)
def test_targets_parse(text: str, expected: Targets) -> None:
    assert Targets.parse(text) == expected


@pytest.mark.parametrize("bad", ["sensitivity", "sensitivity=2", "min_positives=0", "x=1"])
def test_targets_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="target"):
        Targets.parse(bad)


@pytest.mark.parametrize(
    ("years", "band"),
    [(None, "unknown"), (math.nan, "unknown"), (-1.0, "unknown"), (0.5, "<1"), (1.0, "1-5")]
    + [(5.99, "1-5"), (6.0, "6-17"), (17.9, "6-17"), (18.0, "18-64"), (64.9, "18-64")]
    + [(65.0, "65+"), (120.0, "65+")],
)
def test_age_band(years: float | None, band: str) -> None:
    assert age_band(years) == band


def test_the_share_outside_by_image_is_reported(
    record: dict[str, Any], labelled: tuple[Path, list[dict[str, Any]]]
) -> None:
    """The three archive films, the NIH (81 y) and RSNA normal (54 y) adults and the RSNA
    opacity film (6 y), are unlike the training images; every Kermany film passes, as a JPEG
    and as a DICOM without a window (the check's reference holds both)."""
    dist = record["distribution"]
    n = len(labelled[1])
    assert (dist["method"], dist["n"]) == ("mahalanobis", n)
    assert dist["outside_by_image"] == 3
    assert dist["share_outside_by_image"] == pytest.approx(3 / n)
    assert any("outside by image" in note for note in record["notes"])
