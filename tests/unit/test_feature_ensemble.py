"""Issue 21: the distribution check reads intermediate stages too (Lee et al.'s feature
ensemble). What the hooks capture, how the per-stage distances combine, how the statistics
are stored and refused, and that the shipped check catches every adult chest sample film
while the site's own films pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxr_imaging import load_image
from cxr_model import WEIGHTS_DIR, ScoringModel, load_model
from cxr_model.distribution import (
    DISTRIBUTION_SCHEMA,
    OOD_FILE,
    DistributionCheck,
    capture_features,
    capture_pooled,
    load_distribution_check,
    stage_widths,
)
from cxr_model.errors import ContractError
from tests.conftest import SAMPLES
from tests.dicom_factory import make_dataset, write
from training.ood import (
    SHIPPED_STAGES,
    as_dicom,
    choose,
    choose_threshold,
    fit_ensemble,
    fit_mahalanobis,
)

KERMANY = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"

#: Every adult chest film among the samples (headers: 54, 81, 62 and 64 years; the check
#: reads no header). rsna-normal-1 is the one the pooled features alone let through.
ADULT_FILMS = (
    "rsna-normal-1.dcm",
    "nih-nofinding-1.dcm",
    "siim-chest-1.dcm",
    "rg1-j2k-monochrome1-16bit.dcm",
)


def _parts(n: int, seed: int, stage_shift: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pooled features (n, 24) and two stages (n, 8), (n, 12) of one class with correlated
    noise; ``stage_shift`` moves the second stage only."""
    rng = np.random.default_rng(seed)
    pooled = 1.0 + rng.normal(0, 0.2, (n, 24)) @ (np.eye(24) + rng.normal(0, 0.1, (24, 24)))
    first = 2.0 + rng.normal(0, 0.2, (n, 8))
    second = 1.0 + rng.normal(0, 0.2, (n, 12)) + np.where(np.arange(12) < 6, stage_shift, 0.0)
    return pooled.astype(np.float32), [first.astype(np.float32), second.astype(np.float32)]


def _check(train: tuple[np.ndarray, list[np.ndarray]], threshold: float) -> DistributionCheck:
    pooled, stages = train
    arrays = fit_ensemble(pooled, np.zeros(len(pooled), dtype=int), stages, components=6)
    return DistributionCheck(
        "mahalanobis", "a" * 64, "v1", threshold, arrays, layers=("blocks.3", "blocks.4")
    )


def _rows(sample: tuple[np.ndarray, list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([sample[0], *sample[1]], axis=1)


def test_each_part_is_scaled_by_its_median_so_no_stage_dominates() -> None:
    train = _parts(600, 1)
    check = _check(train, 1.0)
    scales = check.arrays["distance_scales"]
    assert scales.shape == (3,)
    # one part's own median, part by part: the sum over three parts sits near 3 on train
    assert float(np.median(check.distances(_rows(train)))) == pytest.approx(3.0, rel=0.15)
    assert check.feature_dims == (24, 8, 12)


def test_a_shift_in_one_stage_alone_is_caught_that_the_pooled_features_miss() -> None:
    train, dev, shifted = _parts(600, 1), _parts(200, 2), _parts(200, 3, stage_shift=4.0)
    pooled_only = DistributionCheck(
        "mahalanobis",
        "",
        "",
        0.0,
        fit_mahalanobis(train[0], np.zeros(600, dtype=int), 6, normalise=True),
    )
    t_pooled = choose_threshold(pooled_only.distances(dev[0]))
    assert np.mean(pooled_only.distances(shifted[0]) > t_pooled) < 0.1  # the same pooled
    ensemble = _check(train, 0.0)
    t = choose_threshold(ensemble.distances(_rows(dev)))
    assert np.mean(ensemble.distances(_rows(dev)) <= t) >= 0.99
    assert np.mean(ensemble.distances(_rows(shifted)) > t) > 0.95


def test_statistics_with_stages_round_trip_and_bad_rows_or_arrays_are_refused(
    tmp_path: Path,
) -> None:
    train = _parts(300, 4)
    check = _check(train, 5.0)
    check.save(tmp_path)
    meta = json.loads((tmp_path / OOD_FILE).read_text())
    assert meta["schema"] == DISTRIBUTION_SCHEMA
    assert meta["layers"] == ["blocks.3", "blocks.4"]
    loaded = load_distribution_check(tmp_path, "a" * 64)
    assert loaded is not None
    assert loaded.layers == ("blocks.3", "blocks.4")
    rows = _rows(train)[:5]
    assert loaded.distances(rows) == pytest.approx(check.distances(rows))
    with pytest.raises(ContractError, match="reads 44"):
        loaded.distances(rows[:, :30])  # pooled features alone, for a check that reads stages
    no_stage = {k: v for k, v in check.arrays.items() if not k.startswith("stage1_")}
    with pytest.raises(ContractError, match="stage1_means"):
        DistributionCheck("mahalanobis", "", "", 1.0, no_stage, layers=("a", "b"))
    no_scales = {k: v for k, v in check.arrays.items() if k != "distance_scales"}
    with pytest.raises(ContractError, match="distance_scales"):
        DistributionCheck("mahalanobis", "", "", 1.0, no_scales, layers=("a", "b"))
    with pytest.raises(ContractError, match="one scale per stage"):
        DistributionCheck("mahalanobis", "", "", 1.0, check.arrays, layers=("a",))
    with pytest.raises(ContractError, match="only a mahalanobis"):
        DistributionCheck("knn", "", "", 1.0, {"bank": rows}, layers=("a",))
    # a schema-2 file (pooled features only) still loads and reads pooled rows
    meta["schema"] = "cxr-triage/distribution/2"
    del meta["layers"]
    (tmp_path / OOD_FILE).write_text(json.dumps(meta))
    old = load_distribution_check(tmp_path, "a" * 64)
    assert old is not None
    assert old.layers == ()
    assert old.distances(train[0][:2]).shape == (2,)


@pytest.fixture(scope="module")
def shipped() -> ScoringModel:
    return load_model(device="cpu")


def test_the_hooks_capture_the_pooled_features_then_each_stage_of_one_forward_pass(
    shipped: ScoringModel,
) -> None:
    net = shipped.net
    x = torch.stack([shipped.preprocess(np.random.default_rng(i).random((96, 80))) for i in (0, 1)])
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        dict(net.named_modules())[n].register_forward_hook(
            lambda _m, _i, out, n=n: outputs.__setitem__(n, out.mean(dim=(2, 3)))
        )
        for n in SHIPPED_STAGES
    ]
    try:
        with capture_pooled(net) as pooled, capture_features(net, SHIPPED_STAGES) as rows:
            shipped.logits(x)
    finally:
        for h in handles:
            h.remove()
    assert len(rows) == 1
    widths = stage_widths(net, SHIPPED_STAGES)
    assert widths == (80, 112, 192, 320)
    assert rows[0].shape == (2, 1280 + sum(widths))
    want = torch.cat([pooled[0], *(outputs[n] for n in SHIPPED_STAGES)], dim=1)
    assert torch.allclose(rows[0], want)
    with pytest.raises(ContractError, match="no module"):
        with capture_features(net, ("blocks.99",)):
            pass


def test_the_shipped_check_reads_the_stages_it_was_chosen_with() -> None:
    meta = json.loads((WEIGHTS_DIR / OOD_FILE).read_text())
    assert meta["schema"] == DISTRIBUTION_SCHEMA
    assert tuple(meta["layers"]) == SHIPPED_STAGES
    check = load_distribution_check(WEIGHTS_DIR, meta["model_sha256"], required=True)
    assert check is not None
    assert check.feature_dims == (1280, 80, 112, 192, 320)


def test_every_adult_chest_sample_is_outside_by_image_and_site_films_pass(
    shipped: ScoringModel,
) -> None:
    films = sorted(KERMANY.rglob("*.jpeg"))
    derived = sorted((SAMPLES / "derived").glob("kermany-*.dcm"))
    assert (len(films), len(derived)) == (9, 6)
    site = [load_image(p).pixels for p in films]
    # the same films as the DICOM decoder shows them without a window, and the samples
    # wrapped as CR: the check's reference holds both views, so both pass
    site += [as_dicom(x) for x in site] + [load_image(p).pixels for p in derived]
    for i, pixels in enumerate(site):
        (r,) = shipped.score_batch(shipped.preprocess(pixels)[None], False)
        assert r.image is not None
        assert not r.image.outside, (i, r.image.facts)
    for name in ADULT_FILMS:
        (r,) = shipped.score_batch(shipped.preprocess(load_image(SAMPLES / name).pixels)[None])
        assert r.image is not None
        assert r.image.unlike, (name, r.image.distance, r.image.threshold)


def test_statistics_for_stages_the_network_lacks_or_of_other_widths_are_refused_at_load(
    tmp_path: Path,
) -> None:
    for name in ("model.json", "weights.pt", "calibration.json", "ood.json", "ood.npz"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    meta = json.loads((tmp_path / OOD_FILE).read_text())
    meta["layers"] = ["blocks.3", "blocks.4", "blocks.5", "blocks.99"]
    (tmp_path / OOD_FILE).write_text(json.dumps(meta))
    with pytest.raises(ContractError, match="blocks.99"):
        load_model(tmp_path, device="cpu")
    meta["layers"] = ["blocks.3", "blocks.4", "blocks.6", "blocks.5"]  # 320 read as 192
    (tmp_path / OOD_FILE).write_text(json.dumps(meta))
    with pytest.raises(ContractError, match="the network gives"):
        load_model(tmp_path, device="cpu")


def test_as_dicom_is_what_the_decoder_shows_for_an_8_bit_file_without_a_window(
    tmp_path: Path,
) -> None:
    film = load_image(sorted(KERMANY.rglob("*.jpeg"))[0]).pixels
    path = write(make_dataset(np.rint(film * 255).astype(np.uint8)), tmp_path / "f.dcm")
    sent = load_image(path).pixels
    assert np.array_equal(as_dicom(film), sent)
    assert (float(sent.min()), float(sent.max())) == (0.0, 1.0)  # stretched, unlike / 255
    assert not np.allclose(sent, film, atol=0.02)


def test_the_selection_prefers_the_worst_case_then_the_margin_then_the_earlier() -> None:
    def row(
        name: str, worst: float, margin: float | None, method: str = "mahalanobis"
    ) -> dict[str, Any]:
        return {
            "name": name,
            "method": method,
            "selection_min_caught": worst,
            "selection_margin": margin,
        }

    rows = [
        row("energy", 1.0, None, "energy"),  # never shipped
        row("pooled", 0.84, 1.25),
        row("blocks 4-6", 1.0, 1.72),
        row("blocks 3-6", 1.0, 2.11),
        row("blocks 3-6 again", 1.0, 2.11),
    ]
    assert choose(rows)["name"] == "blocks 3-6"  # the larger margin, then the earlier
    for r in rows[3:]:
        r["selection_min_caught"] = 0.98
    assert choose(rows)["name"] == "blocks 4-6"  # the worst case comes first
