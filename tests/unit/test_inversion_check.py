"""Issue 21, the image check's second statistic: an inversion detector on the same pooled
features, read by OR with the distance. Its fitting and thresholds, the shipped statistics
on committed films (site-like paediatric films pass; the same films greyscale-inverted are
caught), what the population reason says, and how the statistics file is kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cxr_common.population import (
    IMAGE_REASON,
    INVERTED_ACTION,
    INVERTED_REASON,
    PopulationCheck,
    PopulationStatus,
)
from cxr_imaging import load_image
from cxr_imaging.age import Age, AgeSource
from cxr_model import WEIGHTS_DIR, ScoringModel, load_model
from cxr_model.distribution import (
    DISTRIBUTION_SCHEMA,
    OOD_FILE,
    DistributionCheck,
    ImageDistance,
    load_distribution_check,
)
from cxr_model.errors import ContractError
from cxr_model.population import PopulationFields, assess_population, load_population
from tests.conftest import SAMPLES
from training.ood import choose_thresholds, fit_inversion, fit_mahalanobis, shift_image

KERMANY = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"
#: site_fold=dev films of the Kermany test split wrapped as DICOM (cxr_triage/samples)
SITE_FILMS = sorted((SAMPLES / "derived").glob("kermany-*.dcm"))


def _features(n: int, seed: int, flip: bool = False) -> np.ndarray:
    """64-dimensional features; ``flip`` moves them along a direction of their own (as an
    inverted film moves the network's features) without leaving the normal ones' scale."""
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 1, (n, 64)) + 3.0
    if flip:
        f[:, :8] -= 2.5
        f[:, 8:16] += 2.5
    return f.astype(np.float32)


def test_the_inversion_detector_separates_inverted_from_normal_features() -> None:
    arrays = fit_inversion(_features(600, 1), _features(300, 2, flip=True))
    assert arrays["inversion_weights"].shape == (64,)
    base = fit_mahalanobis(_features(600, 1), np.zeros(600, dtype=int), 8, normalise=True)
    check = DistributionCheck(
        "mahalanobis", "sha", "v", math.inf, {**base, **arrays}, inversion_threshold=0.0
    )
    t_dist, t_inv = choose_thresholds(*_scores(check, _features(200, 3)), 0.99)
    check = DistributionCheck(
        "mahalanobis", "sha", "v", t_dist, {**base, **arrays}, inversion_threshold=t_inv
    )
    d, s = _scores(check, _features(300, 4))
    assert np.mean([not check.outside(a, b) for a, b in zip(d, s, strict=True)]) >= 0.95
    d, s = _scores(check, _features(300, 5, flip=True))
    assert np.mean([check.outside(a, b) for a, b in zip(d, s, strict=True)]) >= 0.99


def _scores(check: DistributionCheck, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = check.inversion_scores(f)
    assert s is not None
    return check.distances(f), s


def test_the_joint_thresholds_let_the_stated_share_of_dev_pass_both() -> None:
    rng = np.random.default_rng(0)
    d, s = rng.normal(0, 1, 159), rng.normal(0, 1, 159)
    t_dist, t_inv = choose_thresholds(d, s, 0.99)
    assert t_inv == s.max()  # no in-distribution image is called inverted
    assert np.mean((d <= t_dist) & (s <= t_inv)) >= 0.99
    with pytest.raises(ValueError, match="no in-distribution scores"):
        choose_thresholds(d, np.array([]), 0.99)


INVERTED_ONLY = ImageDistance(100.0, 300.0, "mahalanobis", 6.5, 1.25)
BOTH = ImageDistance(900.0, 300.0, "mahalanobis", 6.5, 1.25)
NEITHER = ImageDistance(100.0, 300.0, "mahalanobis", -8.0, 1.25)


def test_the_verdict_says_which_statistic_decided_and_what_to_do() -> None:
    assert (INVERTED_ONLY.outside, INVERTED_ONLY.decided_by) == (True, "inversion")
    assert (BOTH.outside, BOTH.decided_by) == (True, "both")
    assert (NEITHER.outside, NEITHER.decided_by) == (False, "")
    assert ImageDistance(900.0, 300.0).decided_by == "distance"  # no detector: distance only
    facts = INVERTED_ONLY.facts
    assert facts.startswith(IMAGE_REASON)
    assert INVERTED_REASON in facts
    assert INVERTED_ACTION in facts
    assert "MONOCHROME1" in facts
    assert "feature distance" not in facts  # the distance passed: it is not blamed
    assert "6.5 > threshold 1.25" in facts
    assert "feature distance 900 > threshold 300" in BOTH.facts
    assert INVERTED_REASON in BOTH.facts
    # a broken score never passes; nor does a missing one when the check has a detector
    assert ImageDistance(100.0, 300.0, "mahalanobis", math.nan, 1.25).outside


def test_an_inverted_film_is_outside_by_image_with_a_reason_that_says_what_to_do() -> None:
    child = PopulationFields(Age(3.0, AgeSource.PATIENT_AGE), "PA", "CR")
    a = assess_population(child, load_population(), image=INVERTED_ONLY)
    assert (a.population, a.triage, a.check) == (
        PopulationStatus.OUTSIDE,
        False,
        PopulationCheck.IMAGE,
    )
    assert a.reason.startswith(IMAGE_REASON)
    assert INVERTED_REASON in a.reason
    assert "resend" in a.reason
    within = assess_population(child, load_population(), image=NEITHER)
    assert (within.population, within.check) == (PopulationStatus.IN_SCOPE, PopulationCheck.BOTH)
    assert INVERTED_REASON not in within.reason


def test_statistics_with_a_detector_round_trip_and_lack_of_its_arrays_is_refused(
    tmp_path: Path,
) -> None:
    normal, inverted = _features(300, 6), _features(200, 7, flip=True)
    arrays = {
        **fit_mahalanobis(normal, np.zeros(300, dtype=int), 8, normalise=True),
        **fit_inversion(normal, inverted),
    }
    check = DistributionCheck(
        "mahalanobis", "a" * 64, "v1", 40.0, arrays, inversion_threshold=1.5,
        inversion={"method": "logistic"},
    )  # fmt: skip
    check.save(tmp_path)
    meta = json.loads((tmp_path / OOD_FILE).read_text())
    assert meta["schema"] == DISTRIBUTION_SCHEMA
    assert meta["inversion"] == {"method": "logistic", "threshold": 1.5}
    loaded = load_distribution_check(tmp_path, "a" * 64)
    assert loaded is not None
    assert loaded.inversion_threshold == 1.5
    got, want = loaded.inversion_scores(inverted[:4]), check.inversion_scores(inverted[:4])
    assert got is not None
    assert want is not None
    assert got == pytest.approx(want)
    # a caller that forgets the inversion score cannot pass the image unchecked
    assert loaded.verdict(1.0).outside
    assert not loaded.verdict(1.0, -20.0).outside
    # a schema-1 file (distance only) still loads, without a detector
    meta["schema"] = "cxr-triage/distribution/1"
    del meta["inversion"]
    (tmp_path / OOD_FILE).write_text(json.dumps(meta))
    old = load_distribution_check(tmp_path, "a" * 64)
    assert old is not None
    assert old.inversion_threshold is None
    assert old.inversion_scores(inverted[:4]) is None
    assert not old.verdict(1.0).outside
    no_arrays = {k: v for k, v in arrays.items() if not k.startswith("inversion_")}
    with pytest.raises(ContractError, match="inversion_weights"):
        DistributionCheck("mahalanobis", "", "", 1.0, no_arrays, inversion_threshold=0.0)


@pytest.fixture(scope="module")
def shipped() -> ScoringModel:
    return load_model(device="cpu")


def _verdict(model: ScoringModel, pixels: np.ndarray) -> ImageDistance:
    (r,) = model.score_batch(model.preprocess(pixels)[None], with_heatmaps=False)
    assert r.image is not None
    assert r.inversion is not None
    return r.image


def test_the_shipped_check_has_an_inversion_detector() -> None:
    meta = json.loads((WEIGHTS_DIR / OOD_FILE).read_text())
    assert meta["schema"] == DISTRIBUTION_SCHEMA
    assert isinstance(meta["inversion"]["threshold"], float)
    check = load_distribution_check(WEIGHTS_DIR, meta["model_sha256"], required=True)
    assert check is not None
    assert check.inversion_threshold == meta["inversion"]["threshold"]


def test_site_films_pass_and_the_same_films_inverted_are_caught(shipped: ScoringModel) -> None:
    assert len(SITE_FILMS) == 6
    rng = np.random.default_rng(0)
    for path in SITE_FILMS:
        film = load_image(path).pixels
        as_sent = _verdict(shipped, film)
        assert not as_sent.inverted, path.name  # dev films: the threshold lets every one pass
        inverted = _verdict(shipped, shift_image(film, "inverted greyscale", rng))
        assert inverted.outside, path.name
        assert inverted.inverted, path.name
        assert INVERTED_REASON in inverted.facts


def test_a_held_out_film_inverted_is_caught(shipped: ScoringModel) -> None:
    # the official val image: not in split=train, so the detector never saw it
    film = load_image(KERMANY / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg").pixels
    assert not _verdict(shipped, film).inverted
    caught = _verdict(shipped, (1.0 - film).astype(np.float32))
    assert (caught.outside, caught.inverted) == (True, True)
