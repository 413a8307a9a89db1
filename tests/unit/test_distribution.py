"""The image-based distribution check: distances, the threshold rule, the shipped statistics,
and the population decided by header and image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_common.population import (
    IMAGE_REASON,
    PopulationCheck,
    PopulationPolicy,
    PopulationStatus,
    UnknownAge,
)
from cxr_imaging import load_image
from cxr_imaging.age import Age, AgeSource
from cxr_model import (
    WEIGHTS_DIR,
    CalibrationMismatchError,
    ModelIntegrityError,
    ScoringModel,
    load_model,
)
from cxr_model.distribution import (
    OOD_ARRAYS,
    OOD_FILE,
    DistributionCheck,
    ImageDistance,
    load_distribution_check,
)
from cxr_model.population import PopulationFields, assess_population, load_population
from training.ood import (
    choose_threshold,
    energy,
    fit_knn,
    fit_mahalanobis,
    no_anatomy_images,
    shift_image,
)

KERMANY = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"


def _clusters(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 32-dimensional features with correlated noise; ``shift`` moves them
    off the classes' axis (+shift on half the dimensions, -shift on the other half)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(0, 1, (32, 32)) / 6
    labels = rng.integers(0, 2, n)
    centres = np.stack([np.full(32, -1.0), np.full(32, 1.0)])
    offset = np.where(np.arange(32) < 16, shift, -shift)
    feats = centres[labels] + rng.normal(0, 0.3, (n, 32)) @ (np.eye(32) + mix) + offset
    return feats.astype(np.float32), labels


def test_the_threshold_lets_the_stated_share_pass_and_no_less() -> None:
    d = np.arange(1, 101, dtype=float)  # 100 distances 1..100
    assert choose_threshold(d, 0.99) == 99.0  # 99 of 100 pass, the 100th does not
    assert np.mean(d <= choose_threshold(d, 0.99)) >= 0.99
    d159 = np.random.default_rng(0).permutation(np.arange(159.0))
    t = choose_threshold(d159, 0.99)
    assert np.mean(d159 <= t) >= 0.99
    assert np.sum(d159 > t) == 1
    assert choose_threshold(d, 1.0) == 100.0
    with pytest.raises(ValueError, match="no in-distribution distances"):
        choose_threshold(np.array([]), 0.99)


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_in_distribution_passes_and_a_shifted_sample_is_caught(method: str) -> None:
    train, labels = _clusters(2000, 1)
    held_out, _ = _clusters(400, 2)
    far, _ = _clusters(200, 3, shift=4.0)
    arrays = (
        fit_mahalanobis(train, labels, components=8)
        if method == "mahalanobis"
        else fit_knn(train, k=5)
    )
    check = DistributionCheck(method, "sha", "v", np.inf, arrays)
    threshold = choose_threshold(check.distances(held_out[:200]), 0.99)
    check = DistributionCheck(method, "sha", "v", threshold, arrays)
    assert np.mean(check.distances(held_out[200:]) <= threshold) >= 0.95
    assert np.mean(check.distances(far) > threshold) >= 0.99
    assert check.outside(float("nan"))  # a broken distance never passes


def test_mahalanobis_with_every_component_equals_the_textbook_formula() -> None:
    train, labels = _clusters(500, 4)
    arrays = fit_mahalanobis(train, labels, components=31, shrinkage=0.0)
    x = _clusters(5, 5)[0].astype(np.float64)
    means = arrays["means"].astype(np.float64)
    centred = train - means[labels]
    cov = centred.T @ centred / (len(train) - 2)
    prec = np.linalg.inv(cov)
    expected = np.min([np.einsum("nd,de,ne->n", x - m, prec, x - m) for m in means], axis=0)
    got = DistributionCheck("mahalanobis", "", "", 1.0, arrays).distances(x)
    assert got == pytest.approx(expected, rel=1e-3)


def test_energy_is_a_function_of_the_logit_alone() -> None:
    z = np.array([-5.0, 0.0, 5.0])
    assert energy(z) == pytest.approx(-np.logaddexp(0, z))
    assert np.all(np.diff(energy(z)) < 0)  # confident "normal" looks farthest: why it fails


def test_statistics_are_tied_to_the_weights_and_their_arrays(tmp_path: Path) -> None:
    train, labels = _clusters(300, 6)
    check = DistributionCheck("mahalanobis", "a" * 64, "v1", 12.5, fit_mahalanobis(train, labels))
    check.save(tmp_path)
    loaded = load_distribution_check(tmp_path, "a" * 64)
    assert loaded is not None
    assert (loaded.method, loaded.threshold, loaded.model_version) == ("mahalanobis", 12.5, "v1")
    assert loaded.distances(train[:3]) == pytest.approx(check.distances(train[:3]))
    assert load_distribution_check(tmp_path / "none") is None
    with pytest.raises(CalibrationMismatchError):
        load_distribution_check(tmp_path, "b" * 64)
    with (tmp_path / OOD_ARRAYS).open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    with pytest.raises(ModelIntegrityError):
        load_distribution_check(tmp_path, "a" * 64)


def test_the_shipped_statistics_belong_to_the_shipped_weights() -> None:
    meta = json.loads((WEIGHTS_DIR / OOD_FILE).read_text())
    model_json = json.loads((WEIGHTS_DIR / "model.json").read_text())
    assert meta["model_sha256"] == model_json["sha256"]
    assert meta["model_version"] == model_json["version"]
    assert (WEIGHTS_DIR / OOD_ARRAYS).stat().st_size < 2 * 2**20  # small, next to the weights


@pytest.fixture(scope="module")
def shipped() -> ScoringModel:
    return load_model(device="cpu")


def _distance(model: ScoringModel, pixels: np.ndarray) -> ImageDistance:
    (r,) = model.score_batch(model.preprocess(pixels)[None], with_heatmaps=True)
    check = model.distribution
    assert check is not None
    assert r.distance is not None
    assert r.features is not None
    assert r.image is not None  # the distance (and inversion score) read by the check
    assert r.image == check.verdict(r.distance, r.inversion)
    return r.image


def test_a_kermany_film_passes_and_a_gradient_or_a_rotated_film_does_not(
    shipped: ScoringModel,
) -> None:
    films = sorted(KERMANY.rglob("*.jpeg"))
    assert len(films) >= 8
    verdicts = [_distance(shipped, load_image(p).pixels) for p in films]
    assert sum(not v.outside for v in verdicts) >= len(films) - 1
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    assert _distance(shipped, (0.3 * xx + 0.7 * yy).astype(np.float32)).outside
    for _, img in no_anatomy_images(seed=7, n_each=1):
        assert _distance(shipped, img).outside
    film = load_image(films[0]).pixels
    rng = np.random.default_rng(0)
    assert _distance(shipped, shift_image(film, "rotated 90", rng)).outside


ADULT_NO_AGE = PopulationFields(Age(None, AgeSource.UNKNOWN, "no PatientAge"), "PA", "CR")
CHILD = PopulationFields(Age(3.0, AgeSource.PATIENT_AGE), "PA", "CR")
ADULT = PopulationFields(Age(54.0, AgeSource.PATIENT_AGE), "PA", "CR")
FAR = ImageDistance(900.0, 300.0, "mahalanobis")
NEAR = ImageDistance(100.0, 300.0, "mahalanobis")


def test_an_image_over_the_threshold_is_outside_whatever_the_header_says() -> None:
    pop = load_population()
    for fields in (ADULT_NO_AGE, CHILD):
        a = assess_population(fields, pop, image=FAR)
        assert (a.population, a.triage, a.check) == (
            PopulationStatus.OUTSIDE,
            False,
            PopulationCheck.IMAGE,
        )
        assert a.reason.startswith(IMAGE_REASON)
        assert "900 > threshold 300" in a.reason
        assert a.outside_by_image
    both = assess_population(ADULT, pop, image=FAR)
    assert (both.population, both.check) == (PopulationStatus.OUTSIDE, PopulationCheck.BOTH)
    assert IMAGE_REASON in both.reason
    assert "age 54 y" in both.reason
    header = assess_population(ADULT, pop, image=NEAR)
    assert (header.check, header.outside_by_image) == (PopulationCheck.HEADER, False)
    assert IMAGE_REASON not in header.reason
    within = assess_population(CHILD, pop, image=NEAR)
    assert (within.population, within.triage, within.check) == (
        PopulationStatus.IN_SCOPE,
        True,
        PopulationCheck.BOTH,
    )
    unknown = assess_population(ADULT_NO_AGE, pop, unknown_age=UnknownAge.IN_SCOPE, image=NEAR)
    assert (unknown.population, unknown.triage) == (PopulationStatus.UNKNOWN, True)
    no_image = assess_population(CHILD, pop)
    assert (no_image.check, no_image.image) == (PopulationCheck.HEADER, None)


def test_with_the_policy_off_an_image_outside_triages_but_still_says_so() -> None:
    a = assess_population(CHILD, load_population(), PopulationPolicy.OFF, image=FAR)
    assert (a.population, a.triage, a.check) == (
        PopulationStatus.OUTSIDE,
        True,
        PopulationCheck.IMAGE,
    )
    assert a.reason.startswith(IMAGE_REASON)
    assert "CXR_POPULATION_POLICY=off" in a.reason
