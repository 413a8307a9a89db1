"""The one scoring rule and the one heatmap module shared by the worker, predict, evaluate."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from cxr_model import CalibratedScore, Calibration, has_burned_in_annotation, render_overlay_png
from cxr_model.heatmaps import NEUTRAL_GREY, UNFLAGGED_MAX, heatmap_base, heatmap_strength

FLAGGED = CalibratedScore(logit=5.0, probability=0.99, threshold=0.5, flagged=True)


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_burned_in_annotation_yes_is_the_only_value_that_hides_the_pixels() -> None:
    ds = Dataset()
    assert not has_burned_in_annotation(ds)
    ds.BurnedInAnnotation = "NO"
    assert not has_burned_in_annotation(ds)
    ds.BurnedInAnnotation = "yes "
    assert has_burned_in_annotation(ds)


def test_heatmaps_of_images_with_burned_in_text_do_not_show_the_pixels() -> None:
    pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert heatmap_base(pixels, burned_in=False) is pixels
    blank = heatmap_base(pixels, burned_in=True)
    assert blank.shape == pixels.shape
    assert float(blank.std()) == 0.0
    assert float(blank.mean()) == pytest.approx(NEUTRAL_GREY)

    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    hidden = render_overlay_png(pixels, cam, burned_in=True, score=FLAGGED)
    grey = np.full_like(pixels, NEUTRAL_GREY)
    assert hidden == render_overlay_png(grey, cam, burned_in=False, score=FLAGGED)
    shown = render_overlay_png(pixels, cam, burned_in=False, score=FLAGGED)
    assert float(np.abs(_rgb(shown) - _rgb(hidden)).mean()) > 20  # the gradient is gone


def test_the_scoring_rule_flags_eligible_images_at_or_above_the_threshold() -> None:
    cal = Calibration.uncalibrated(0.5)
    at = cal.score(0.0)
    assert (at.probability, at.threshold, at.flagged) == (0.5, 0.5, True)
    assert not cal.score(-0.01).flagged
    high = cal.score(3.0)
    assert high.probability == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert high.flagged
    assert not cal.score(3.0, eligible=False).flagged  # reported, never flagged
    assert cal.score(3.0, eligible=False).probability == high.probability
    assert cal.logit_threshold == pytest.approx(0.0)


def test_a_fitted_calibration_scores_through_temperature_and_bias() -> None:
    cal = Calibration(
        version="site-1",
        model_sha256="a" * 64,
        temperature=2.0,
        bias=-1.0,
        threshold=0.3,
        logit_threshold=0.3,
        target_sensitivity=0.95,
        confidence=0.95,
    )
    score = cal.score(1.0)
    assert score.probability == pytest.approx(1 / (1 + math.exp(0.5)))  # sigmoid(1/2 - 1)
    assert score.flagged == (score.probability >= 0.3)
    assert score.probability == cal.probability(1.0)
    assert score.flagged == cal.flag(cal.probability(1.0))


def test_secondary_captures_and_conversions_count_as_burned_in_whatever_the_header_says() -> None:
    """Issue 12, defect 10: a Secondary Capture (a scanned film, a screenshot) may carry
    text in its pixels with no BurnedInAnnotation YES; its heatmap is drawn on grey."""
    for sop_class in ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2"):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.BurnedInAnnotation = "NO"
        assert has_burned_in_annotation(ds)
    converted = Dataset()
    converted.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR, but digitised from film
    converted.ConversionType = "DF"
    assert has_burned_in_annotation(converted)
    cr = Dataset()
    cr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    assert not has_burned_in_annotation(cr)


def test_a_confident_negative_shows_no_hot_spot_and_only_flagged_studies_show_red() -> None:
    pixels = np.full((64, 64), 0.4, np.float32)
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0  # min-max normalised: every map has a peak of 1
    cal = Calibration.uncalibrated(0.3)
    confident_negative = cal.score(math.log(0.01 / 0.99))
    near_miss = cal.score(math.log(0.29 / 0.71))
    flagged = cal.score(math.log(0.6 / 0.4))
    assert heatmap_strength(confident_negative) < 0.05
    assert heatmap_strength(near_miss) == pytest.approx(UNFLAGGED_MAX * 0.29 / 0.3)
    assert heatmap_strength(flagged) == 1.0
    plain = _rgb(render_overlay_png(pixels, np.zeros_like(cam), burned_in=False, score=flagged))

    def hot(score: CalibratedScore) -> float:
        png = render_overlay_png(pixels, cam, burned_in=False, score=score)
        return float(np.abs(_rgb(png) - plain).max())

    assert hot(confident_negative) < 8  # indistinguishable from no map
    assert hot(flagged) > 60
    centre = _rgb(render_overlay_png(pixels, cam, burned_in=False, score=flagged))[32, 32]
    near = _rgb(render_overlay_png(pixels, cam, burned_in=False, score=near_miss))[32, 32]
    assert centre[0] > centre[2] + 40  # red at the peak when flagged
    assert near[0] < centre[0]


@pytest.mark.parametrize("burned_in", [False, True])
@pytest.mark.parametrize("score", [FLAGGED, CalibratedScore(0.0, 0.2, 0.3, False)])
def test_the_stored_overlay_gives_back_the_heat_it_shows(
    burned_in: bool, score: CalibratedScore
) -> None:
    """cxr_imaging.overlay.heat_from_overlay inverts the worker's overlay (the results
    sender turns it into the SC at full size and the Segmentation's values): within 3/255
    of the shown heat (the map times the score's strength) on any base."""
    from cxr_imaging.overlay import heat_from_overlay

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:300, 0:240] / 300
    cam = np.exp(-((xx - 0.4) ** 2 + (yy - 0.5) ** 2) / 0.02).astype(np.float32)
    pixels = rng.random((300, 240)).astype(np.float32)
    png = render_overlay_png(pixels, cam, burned_in=burned_in, score=score)
    heat = heat_from_overlay(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    shown = cam * np.float32(heatmap_strength(score))
    expected = np.asarray(Image.fromarray((shown * 255 + 0.5).astype(np.uint8)), np.float32) / 255
    assert heat.shape == expected.shape
    assert np.abs(heat - expected).max() <= 3 / 255 + 1e-6
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        heat_from_overlay(np.zeros((4, 4), np.uint8))
