"""Shared pneumonia model package: one contract for training and the worker.

Contract (stored as ``weights/model.json`` next to the weights, with version and sha256):

* Input: one decoded radiograph as float32 HxW in [0, 1], MONOCHROME2 (bright = dense), from
  :func:`cxr_imaging.load_image`. :meth:`ScoringModel.preprocess` squashes it to
  ``input_size`` x ``input_size`` (antialiased bilinear), scales ``(255*x - 127) / 128`` and
  replicates it to 3 channels (optionally histogram-equalised first when the contract's
  ``intensity`` is ``"histeq"``; the shipped model uses ``"none"``). Training uses this very
  function.
* Output: one logit; labels in order ``("NORMAL", "PNEUMONIA")``; the logit is for PNEUMONIA.
* Finding: what the positive output means, ``model.json``'s ``finding`` (name, display text,
  code: SNOMED CT 233604007 "Pneumonia" for the shipped model;
  :class:`cxr_common.model_files.ModelFinding`). The SR, the Secondary Capture, the heatmap
  note and the worklist take it from there: a model for another finding says so there.
* Calibration: ``weights/calibration.json`` (a :class:`Calibration`) maps logits to site
  probabilities, ``sigmoid(logit / temperature + bias)``, and holds the operating threshold
  fitted on a labelled sample from the site for a target sensitivity. It is tied to the
  model's sha256 and refused for any other model.
* Scoring rule: :meth:`Calibration.score` (calibrated probability; flagged when eligible and
  at or above the threshold), the one rule of the worker, ``predict`` and ``evaluate``.
* Heatmaps (:mod:`cxr_model.heatmaps`): Grad-CAM on the last convolutional block, HxW
  float32 in [0, 1] at input size, rendered over the image in grey, or over a neutral grey
  field when the header says BurnedInAnnotation YES.
* Distribution check (:mod:`cxr_model.distribution`): the pooled features of the same
  forward pass, their distance from the training distribution (``weights/ood.json`` +
  ``ood.npz``, tied to the weights' sha256) in ``ScoreResult.distance``, an inversion
  detector's score on the same features in ``ScoreResult.inversion``, both read against
  their thresholds in ``ScoreResult.image``; over either threshold the image is outside the
  validated population whatever its header says
  (:func:`cxr_model.population.assess_population`).
* Integrity: :func:`verify_weights` (run by ``load_model`` before
  ``torch.load(weights_only=True)`` and by model registration) checks the weights' sha256
  against ``model.json``; the architecture comes from ``timm`` / ``torchvision``.

Clinical decision support, not a diagnosis.

Usage::

    model = load_model()                      # shipped weights, sha256 verified
    cal = load_calibration(model_sha256=model.contract.sha256)
    batch = torch.stack([model.preprocess(img.pixels) for img in images])
    for img, ds, r in zip(images, headers, model.score_batch(batch)):
        score = cal.score(r.logit)              # .probability, .threshold, .flagged
        png = render_overlay_png(
            img.pixels, r.cam, burned_in=has_burned_in_annotation(ds), score=score
        )
"""

from cxr_model.calibration import CalibratedScore, Calibration, ScoreInterval, load_calibration
from cxr_model.contract import (
    WEIGHTS_DIR,
    ModelContract,
    read_contract,
    sha256_file,
    verify_weights,
)
from cxr_model.errors import (
    CalibrationMismatchError,
    ContractError,
    ModelError,
    ModelIntegrityError,
)
from cxr_model.heatmaps import has_burned_in_annotation, render_overlay_png
from cxr_model.preprocess import preprocess, resize_pixels, scale_tensor
from cxr_model.scoring import ScoreResult, ScoringModel, load_model, load_network

__all__ = [
    "WEIGHTS_DIR",
    "CalibratedScore",
    "Calibration",
    "CalibrationMismatchError",
    "ContractError",
    "ModelContract",
    "ModelError",
    "ModelIntegrityError",
    "ScoreInterval",
    "ScoreResult",
    "ScoringModel",
    "has_burned_in_annotation",
    "load_calibration",
    "load_model",
    "load_network",
    "preprocess",
    "read_contract",
    "render_overlay_png",
    "resize_pixels",
    "scale_tensor",
    "sha256_file",
    "verify_weights",
]
