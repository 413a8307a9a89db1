"""Fit and evaluate the image-based distribution check (``cxr-triage ood-fit`` / ``ood-evaluate``).

* :func:`extract` runs the shipped model over images and keeps, per image, the pooled
  features and the logit of one forward pass (:func:`cxr_model.distribution.capture_pooled`),
  cached in ``--cache`` (outside the repository) keyed by the model and the image set.
* :func:`fit_mahalanobis` / :func:`fit_knn` fit the statistics on ``split=train``;
  :func:`fit_ensemble` fits one Mahalanobis per intermediate stage as well (Lee et al.'s
  feature ensemble over :data:`STAGES`, the spatial averages of the stage outputs of the
  same forward pass); :func:`energy` is the logit-only comparison (no statistics).
* :func:`fit_inversion`: the second statistic, read by OR: a logistic regression on the same
  L2-normalised features, fitted on the ``split=train`` images (0) and their greyscale
  inversions (1). Inversion is a known, named failure of acquisition and export (a
  MONOCHROME1 film decoded or exported as MONOCHROME2), so it is modelled from training
  images only; no check image and no adult film is used to fit or tune anything.
* **The reference is every image as the worker may see it.** The Kermany files are JPEGs
  (read as value / 255); the same film sent as an 8-bit DICOM without a window is shown by
  the DICOM decoder with a 0.5-99.5 percentile stretch (:func:`as_dicom` runs that decoder,
  :func:`cxr_imaging.decode_dataset`). Both are the same in-distribution film, so the train
  images (the fit) and the dev images (the threshold) are each read both ways.
* :func:`choose_threshold`: the smallest distance at or below which at least ``pass_share``
  of the site's in-distribution sample (``site_fold=dev``) lies;
  :func:`choose_thresholds` does it for the distance and the inversion score together, so
  that ``pass_share`` of dev passes both.
* :func:`evaluation_sets` builds what the card reports: ``site_fold=check`` (should pass),
  adult chest films (DICOM, age removed: the check reads no header), images without anatomy
  (gradients, noise, test patterns) and synthetic shifts of the check images (90 degree
  rotations, inverted greyscale, heavy text overlays, a photograph of a screen simulated by
  perspective + moire + gamma). Every random choice comes from ``--seed``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

logger = logging.getLogger(__name__)

#: Adult chest radiographs in ``shared/data/dicom`` (headers: 54, 81, 62, 62, 64, 64 years;
#: four distinct films: ``Fake_MONOHR1`` is the SIIM film with its photometric header
#: rewritten, so it decodes inverted, and ``RG1_UNCR`` is ``RG1_J2KI`` uncompressed).
ADULT_CHEST_FILES = (
    "rsna/009eb222-eabc-4150-8121-d5a6d06b8ebf.dcm",
    "nih/1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
    "robustness/siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "robustness/Fake_MONOHR1.dcm",
    "robustness/RG1_J2KI.dcm",
    "robustness/RG1_UNCR.dcm",
)
#: The RSNA opacity film is a 6-year-old's (header PatientAge 006Y): a child just outside 1-5.
CHILD_FILES = ("rsna/00aecb01-a116-45a2-956c-08d2fa55433f.dcm",)
#: Other radiographs there that are not chest films (eligibility refuses them by header).
OTHER_FILES = (
    "robustness/RG3_J2KI.dcm",
    "robustness/nhsx_sample_abdomen_OT.dcm",
    "robustness/CT_small.dcm",
)


#: The intermediate stages whose averaged outputs are extracted with the pooled features
#: (EfficientNet-Lite0's blocks after the stride-2 stem block; a network without them gives
#: none, and only the pooled-feature candidates can be fitted).
STAGES = ("blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6")


@dataclass(frozen=True)
class Features:
    """Pooled features (N, D) and logits (N,) of one image set, with the images' names, and
    each intermediate stage's averaged output (N, C) by module name."""

    names: tuple[str, ...]
    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray | None = None
    stages: dict[str, np.ndarray] = field(default_factory=dict)

    def __add__(self, other: Features) -> Features:
        """Both sets, this one first (the stages both have)."""
        labels = (
            None
            if self.labels is None or other.labels is None
            else np.concatenate([self.labels, other.labels])
        )
        return Features(
            self.names + other.names,
            np.concatenate([self.features, other.features]),
            np.concatenate([self.logits, other.logits]),
            labels,
            {
                n: np.concatenate([v, other.stages[n]])
                for n, v in self.stages.items()
                if n in other.stages
            },
        )

    def vector(self, layers: Sequence[str] = ()) -> np.ndarray:
        """The pooled features followed by the named stages' (what the check reads)."""
        missing = [n for n in layers if n not in self.stages]
        if missing:
            raise ValueError(f"stages not extracted: {', '.join(missing)}")
        return np.concatenate([self.features, *(self.stages[n] for n in layers)], axis=1)


def as_dicom(pixels: np.ndarray) -> np.ndarray:
    """A [0, 1] image as the worker shows it when it arrives as an 8-bit MONOCHROME2 DICOM
    with no window and no VOI LUT (the DICOM decoder's own pipeline, a percentile stretch)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from cxr_imaging import decode_dataset

    values = np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * 255.0), 0, 255)
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = values.astype(np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return np.asarray(decode_dataset(ds).pixels, dtype=np.float32)


def available_stages(net: Any) -> tuple[str, ...]:
    """The :data:`STAGES` this network has."""
    names = {n for n, _ in net.named_modules()}
    return tuple(n for n in STAGES if n in names)


def _progress(done: int, total: int, t0: float, label: str) -> None:
    rate = done / max(time.perf_counter() - t0, 1e-9)
    width = 30
    filled = int(width * done / max(total, 1))
    eta = (total - done) / rate if rate > 0 else math.inf
    sys.stderr.write(
        f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"{rate:.1f} img/s, eta {eta:.0f} s"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def extract(
    model: Any,
    images: Iterable[np.ndarray],
    total: int,
    *,
    batch_size: int = 32,
    label: str = "features",
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Pooled features (N, D), logits (N,) and each of :data:`STAGES`' averaged output
    (N, C) of [0, 1] images, one forward pass each batch (the worker's preprocessing and
    network, with the hooks of :func:`cxr_model.distribution.capture_features`)."""
    import torch

    from cxr_model.distribution import capture_features, pooled_features, stage_widths

    layers = available_stages(model.net)
    widths = stage_widths(model.net, layers)
    rows: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    t0 = time.perf_counter()

    def flush() -> None:
        with capture_features(model.net, layers) as captured:
            logits.append(model.logits(torch.stack(batch)))
        got = pooled_features(captured, len(batch))
        if got is None:
            raise RuntimeError("the model did not expose pooled features")
        rows.append(got)
        batch.clear()
        _progress(sum(len(x) for x in logits), total, t0, label)

    for pixels in images:
        batch.append(model.preprocess(pixels))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    every = np.concatenate(rows).astype(np.float32)
    parts = np.split(every, np.cumsum([every.shape[1] - sum(widths), *widths])[:-1], axis=1)
    stages = dict(zip(layers, parts[1:], strict=True))
    return parts[0], np.concatenate(logits).astype(np.float32), stages


def cached_features(
    model: Any,
    name: str,
    names: Sequence[str],
    images: Callable[[], Iterable[np.ndarray]],
    cache: Path | None,
    labels: np.ndarray | None = None,
) -> Features:
    """:func:`extract`, cached as ``cache/<name>-<key>.npz`` (key: model sha256, the stages
    extracted and the names)."""
    layers = available_stages(model.net)
    digest = hashlib.sha256(model.contract.sha256.encode())
    digest.update(("stages:" + ",".join(layers) + "\n").encode())
    for n in names:
        digest.update(n.encode() + b"\n")
    path = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{name}-{digest.hexdigest()[:16]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                stages = {n: npz["stage:" + n] for n in layers}
                return Features(tuple(names), npz["features"], npz["logits"], labels, stages)
    feats, logits, stages = extract(model, images(), len(names), label=name)
    if path is not None:
        tmp = path.with_suffix(".tmp.npz")
        arrays = {"features": feats, "logits": logits}
        arrays |= {"stage:" + n: v for n, v in stages.items()}
        np.savez(tmp, **cast(dict[str, Any], arrays))
        tmp.replace(path)
    return Features(tuple(names), feats, logits, labels, stages)


# --- Fitting -------------------------------------------------------------------------------


def fit_mahalanobis(
    features: np.ndarray,
    labels: np.ndarray,
    components: int = 128,
    shrinkage: float = 1e-3,
    normalise: bool = False,
) -> dict[str, np.ndarray]:
    """Class means and the shared within-class covariance, kept as its top ``components``
    principal directions (with their standard deviations) plus the mean variance of the rest
    (probabilistic PCA); :class:`cxr_model.distribution.DistributionCheck` reads them.
    ``normalise``: fit (and later measure) on L2-normalised features."""
    f = np.asarray(features, dtype=np.float64)
    if normalise:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels)
    classes = sorted({int(c) for c in y})
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / max(len(f) - len(classes), 1)
    cov += shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    k = max(1, min(components, len(values) - 1))
    return {
        "means": means.astype(np.float32),
        "components": vectors[:, :k].astype(np.float32),
        "scales": np.sqrt(values[:k]).astype(np.float32),
        "residual_var": np.asarray(values[k:].mean(), dtype=np.float64),
        "normalise": np.asarray(int(normalise)),
    }


def fit_ensemble(
    features: np.ndarray,
    labels: np.ndarray,
    stages: Sequence[np.ndarray],
    components: int = 64,
) -> dict[str, np.ndarray]:
    """Lee et al.'s feature ensemble: :func:`fit_mahalanobis` (L2-normalised) on the pooled
    features and on each stage's averaged output, and each part's median distance over the
    training images (``distance_scales``), by which
    :meth:`cxr_model.distribution.DistributionCheck.distances` divides it before summing."""
    from cxr_model.distribution import DistributionCheck, stage_prefix

    def median_distance(arrays: dict[str, np.ndarray], x: np.ndarray) -> float:
        return float(
            np.median(DistributionCheck("mahalanobis", "", "", math.inf, arrays).distances(x))
        )

    arrays = fit_mahalanobis(features, labels, components, normalise=True)
    scales = [median_distance(arrays, features)]
    for i, stage in enumerate(stages):
        part = fit_mahalanobis(stage, labels, components, normalise=True)
        scales.append(median_distance(part, stage))
        arrays |= {stage_prefix(i) + k: v for k, v in part.items() if k != "normalise"}
    arrays["distance_scales"] = np.asarray(scales, dtype=np.float64)
    return arrays


def fit_knn(
    features: np.ndarray, k: int = 10, bank_size: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The L2-normalised training features (optionally a seeded subsample) and ``k``."""
    f = np.asarray(features, dtype=np.float32)
    if bank_size is not None and bank_size < len(f):
        idx = np.random.default_rng(seed).choice(len(f), bank_size, replace=False)
        f = f[np.sort(idx)]
    bank = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return {"bank": bank.astype(np.float16), "k": np.asarray(k)}


def fit_inversion(
    normal: np.ndarray, inverted: np.ndarray, c: float = 1.0
) -> dict[str, np.ndarray]:
    """Logistic regression on L2-normalised features: ``normal`` images (0) against their
    greyscale inversions (1); :func:`cxr_model.distribution.inversion_score` reads it."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([normal, inverted]).astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(inverted))])
    clf = LogisticRegression(C=c, max_iter=5000)
    clf.fit(x, y)
    return {
        "inversion_weights": clf.coef_[0].astype(np.float32),
        "inversion_bias": np.asarray(float(clf.intercept_[0]), dtype=np.float64),
    }


def inversion_scores(arrays: dict[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
    from cxr_model.distribution import inversion_score

    return inversion_score(np.asarray(feats, dtype=np.float64), arrays)


def energy(logits: np.ndarray) -> np.ndarray:
    """Energy score of the single logit read as two classes (0, z), as a distance: the
    negative free energy ``logsumexp(0, z)`` is high in distribution, so its negative is
    the distance."""
    z = np.asarray(logits, dtype=np.float64)
    return -np.logaddexp(0.0, z)


def choose_threshold(distances: np.ndarray, pass_share: float = 0.99) -> float:
    """The smallest threshold that lets at least ``pass_share`` of ``distances`` pass
    (an image passes when its distance is at or below the threshold)."""
    d = np.sort(np.asarray(distances, dtype=np.float64))
    if d.size == 0:
        raise ValueError("no in-distribution distances to choose a threshold from")
    index = max(0, math.ceil(pass_share * d.size) - 1)
    return float(d[index])


def choose_thresholds(
    distances: np.ndarray, inversion: np.ndarray, pass_share: float = 0.99
) -> tuple[float, float]:
    """Thresholds for the distance and the inversion score read together by OR, so that at
    least ``pass_share`` of the in-distribution sample passes both: the inversion threshold
    is the largest in-distribution score (no in-distribution image is called inverted),
    then the distance threshold is :func:`choose_threshold` at ``pass_share``."""
    s = np.asarray(inversion, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no in-distribution scores to choose a threshold from")
    t_inv = float(s.max())
    t_dist = choose_threshold(distances, pass_share)
    passing = (np.asarray(distances) <= t_dist) & (s <= t_inv)
    if np.mean(passing) < pass_share:  # cannot happen with the rule above; kept as a guard
        raise ValueError("the combined thresholds let less than pass_share through")
    return t_dist, t_inv


# --- Images for the evaluation ------------------------------------------------------------


def no_anatomy_images(seed: int, n_each: int = 8) -> list[tuple[str, np.ndarray]]:
    """Gradients, noise and test patterns, [0, 1] float32, named by kind."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    for _i in range(n_each):
        size = int(rng.choice([64, 224, 512]))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        angle = rng.uniform(0, 2 * math.pi)
        lin = (np.cos(angle) * xx + np.sin(angle) * yy).astype(np.float32)
        out.append(("gradient", _unit(lin)))
        cx, cy = rng.uniform(0.2, 0.8, 2)
        out.append(("gradient", _unit(-np.hypot(xx - cx, yy - cy))))
    for _i in range(n_each):
        size = int(rng.choice([128, 224, 512]))
        out.append(("noise", rng.uniform(0, 1, (size, size)).astype(np.float32)))
        g = rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.25), (size, size))
        out.append(("noise", np.clip(g, 0, 1).astype(np.float32)))
        blobs = _blur(rng.normal(0, 1, (size, size)), int(rng.integers(2, 12)))
        out.append(("noise", _unit(blobs)))
    for _i in range(n_each):
        size = 256
        yy, xx = np.mgrid[0:size, 0:size]
        sq = int(rng.choice([8, 16, 32, 64]))
        out.append(("test pattern", (((xx // sq) + (yy // sq)) % 2).astype(np.float32)))
        bars = np.linspace(0, 1, int(rng.integers(5, 12)))
        rng.shuffle(bars)
        out.append(("test pattern", bars[(xx * len(bars)) // size].astype(np.float32)))
        period = int(rng.integers(6, 24))
        r = np.hypot(xx - size / 2, yy - size / 2)
        out.append(("test pattern", (0.5 + 0.5 * np.sin(2 * math.pi * r / period)).astype("f4")))
        grid = np.full((size, size), 0.2, np.float32)
        step = int(rng.integers(12, 40))
        grid[::step, :] = 1.0
        grid[:, ::step] = 1.0
        out.append(("test pattern", grid))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def _blur(x: np.ndarray, radius: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    img = Image.fromarray((_unit(x) * 255).astype(np.uint8))
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    return blurred / 255.0


SHIFTS = (
    "rotated 90",
    "rotated 270",
    "rotated 180",
    "inverted greyscale",
    "heavy text overlay",
    "photo of a screen",
)


def shift_image(pixels: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """One synthetic shift of a [0, 1] radiograph (:data:`SHIFTS`)."""
    x = np.asarray(pixels, dtype=np.float32)
    if shift == "rotated 90":
        return np.ascontiguousarray(np.rot90(x, 1))
    if shift == "rotated 270":
        return np.ascontiguousarray(np.rot90(x, 3))
    if shift == "rotated 180":
        return np.ascontiguousarray(np.rot90(x, 2))
    if shift == "inverted greyscale":
        return (1.0 - x).astype(np.float32)
    if shift == "heavy text overlay":
        return text_overlay(x, rng)
    if shift == "photo of a screen":
        return screen_photo(x, rng)
    raise ValueError(f"unknown shift {shift!r}; known: {SHIFTS}")


_WORDS = (
    "PORTABLE",
    "SUPINE",
    "AP",
    "L",
    "R",
    "ICU BED 12",
    "STAT",
    "ERECT",
    "WARD 4B",
    "DR SMITH",
    "kVp 90 mAs 2.5",
    "ID 0048213",
    "12/03/2024 14:22",
    "CHEST",
    "FOLLOW-UP",
    "NG TUBE",
    "LINE TIP",
    "COMPARE PRIOR",
)


def text_overlay(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Heavy burned-in annotation: blocks of white (or black) text in every corner, a large
    side marker and a line of text across the middle (upscaled to at least 512 px first)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    if max(img.size) < 512:
        scale = 512 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    w, h = img.size
    draw = ImageDraw.Draw(img)
    size = max(12, int(h * rng.uniform(0.045, 0.065)))
    font = ImageFont.load_default(size=size)
    ink = 255 if rng.random() < 0.8 else 0
    for cx, cy in ((0.02, 0.02), (0.6, 0.02), (0.02, 0.72), (0.6, 0.72)):
        for line in range(4):
            text = " ".join(rng.choice(_WORDS, size=2))
            draw.text((cx * w, cy * h + line * size * 1.1), text, fill=ink, font=font)
    big = ImageFont.load_default(size=int(h * 0.15))
    draw.text(
        (w * rng.uniform(0.05, 0.8), h * 0.35), str(rng.choice(["L", "R"])), fill=ink, font=big
    )
    draw.text((w * 0.1, h * 0.5), " ".join(rng.choice(_WORDS, size=3)), fill=ink, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


def screen_photo(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A phone photograph of a monitor showing the film: shown with a display gamma in a
    dark bezel, photographed at an angle (perspective), with the screen's pixel grid beating
    against the camera's (moire), a glare gradient, blur and sensor noise."""
    from PIL import Image, ImageFilter

    size = 512
    screen = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).resize((400, 400))
    canvas = Image.new("L", (size, size), int(rng.integers(10, 40)))
    canvas.paste(screen, (56, 56))
    # perspective: the screen's corners land at four random points inside the photo
    m = rng.uniform(0.02, 0.16, 8) * size
    quad = [(m[0], m[1]), (size - m[2], m[3]), (size - m[4], size - m[5]), (m[6], size - m[7])]
    full = [(0.0, 0.0), (float(size), 0.0), (float(size), float(size)), (0.0, float(size))]
    coeffs = _perspective_coeffs(quad, full)
    warped = canvas.transform((size, size), Image.Transform.PERSPECTIVE, coeffs, fill=20)
    x = np.asarray(warped, dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # moire: the screen's pixel grid times the camera's, two gratings of nearly equal
    # frequency and angle; their product beats at the difference (broad visible fringes)
    f1, a1 = rng.uniform(0.3, 0.45), rng.uniform(0, math.pi)
    f2, a2 = f1 * rng.uniform(0.93, 0.98), a1 + rng.uniform(-0.06, 0.06)
    g1 = np.sin(2 * math.pi * f1 * (np.cos(a1) * xx + np.sin(a1) * yy))
    g2 = np.sin(2 * math.pi * f2 * (np.cos(a2) * xx + np.sin(a2) * yy))
    x = np.clip(x * (1.0 + rng.uniform(0.3, 0.5) * g1 * g2), 0, 1)
    gamma = rng.uniform(0.45, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    x = x**gamma
    glare = rng.uniform(0.05, 0.2) * np.exp(
        -((xx - rng.uniform(0, size)) ** 2 + (yy - rng.uniform(0, size)) ** 2)
        / (2 * (size / 3) ** 2)
    )
    x = np.clip(x + glare + rng.normal(0, 0.02, x.shape), 0, 1)
    img = Image.fromarray((x * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img, dtype=np.float32) / 255.0


def _perspective_coeffs(
    dst: Sequence[tuple[float, float]], src: Sequence[tuple[float, float]]
) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    sol = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return tuple(float(c) for c in sol)


# --- Evaluation ---------------------------------------------------------------------------

#: Lee et al.'s feature ensemble: the pooled features plus the averaged outputs of the later
#: stages (stride 16 and 32), of all but the first two, and of all but the first.
ENSEMBLES = {
    "blocks 4-6": ("blocks.4", "blocks.5", "blocks.6"),
    "blocks 3-6": ("blocks.3", "blocks.4", "blocks.5", "blocks.6"),
    "blocks 2-6": ("blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"),
}

#: The stages of the shipped check (chosen by :func:`choose` in the card's comparison).
SHIPPED_STAGES = ENSEMBLES["blocks 3-6"]

#: The candidate checks compared in the card: (name, method, parameters); ``layers`` names
#: the stages a feature ensemble reads with the pooled features.
CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Mahalanobis, raw, 64 comp.", "mahalanobis", {"components": 64, "normalise": 0}),
    ("Mahalanobis, raw, full cov.", "mahalanobis", {"components": 1279, "normalise": 0}),
    ("Mahalanobis, L2-norm., 32 comp.", "mahalanobis", {"components": 32, "normalise": 1}),
    ("Mahalanobis, L2-norm., 64 comp.", "mahalanobis", {"components": 64, "normalise": 1}),
    ("Mahalanobis, L2-norm., 128 comp.", "mahalanobis", {"components": 128, "normalise": 1}),
    ("kNN, k=1", "knn", {"k": 1}),
    ("kNN, k=10", "knn", {"k": 10}),
    ("kNN, k=50", "knn", {"k": 50}),
    ("energy (logit only)", "energy", {}),
    (
        "Mahalanobis, L2-norm., 64 comp. OR inversion detector",
        "mahalanobis",
        {"components": 64, "normalise": 1, "inversion": 1},
    ),
    ("kNN, k=50 OR inversion detector", "knn", {"k": 50, "inversion": 1}),
    *(
        (
            f"Mahalanobis ensemble, pooled + {name}{' OR inversion detector' if inv else ''}",
            "mahalanobis",
            {
                "components": 64,
                "normalise": 1,
                "layers": layers,
                **({"inversion": 1} if inv else {}),
            },
        )
        for name, layers in ENSEMBLES.items()
        for inv in (False, True)
    ),
)


#: How many train images (seeded) are inverted to fit the inversion detector: a linear model
#: on 1,280 features needs no more, and each costs a forward pass on a shared CPU.
INVERSION_LIMIT = 1000


@dataclass
class ImageSets:
    """Every image set the evaluation reads, as features."""

    train: Features
    dev: Features
    sets: dict[str, Features]  # name -> features; names say what the set is and its role
    #: The train images greyscale-inverted (the inversion detector's positives).
    train_inverted: Features | None = None


#: ``ood-fit``'s default rows: the shipped model's training images and its site sample.
FIT_FILTER = "split=train"
THRESHOLD_FILTER = "split=test,site_fold=dev"


def _load_kermany(
    model: Any,
    data: Path,
    flt: str,
    name: str,
    cache: Path | None,
    limit: int | None = None,
    seed: int = 0,
    dicom: bool = False,
) -> Features:
    """One split's features; ``dicom``: each image as :func:`as_dicom` shows it."""
    from training.data import decode_pixels, load_samples

    samples = load_samples(data, flt)
    if limit is not None and limit < len(samples):
        keep = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(keep)]
    view = as_dicom if dicom else (lambda x: x)
    names = [("dicom|" if dicom else "") + str(s.path) for s in samples]
    labels = np.asarray([s.label for s in samples])
    return cached_features(
        model,
        name + ("-dicom" if dicom else ""),
        names,
        lambda: (view(decode_pixels(s.path)) for s in samples),
        cache,
        labels,
    )


def _reference(
    model: Any,
    data: Path,
    flt: str,
    name: str,
    cache: Path | None,
    limit: int | None = None,
    seed: int = 0,
) -> Features:
    """A split read both ways the worker may see it: as its files decode, then
    :func:`as_dicom` (the fit's and the threshold's in-distribution reference)."""
    return _load_kermany(model, data, flt, name, cache, limit, seed) + _load_kermany(
        model, data, flt, name, cache, limit, seed, dicom=True
    )


def _shifted(
    model: Any,
    data: Path,
    flt: str,
    shift: str,
    seed: int,
    name: str,
    cache: Path | None,
    limit: int | None = None,
) -> Features:
    from training.data import decode_pixels, load_samples

    samples = load_samples(data, flt)
    if limit is not None and limit < len(samples):
        keep = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(keep)]
    names = [f"{shift}|{seed}|{s.path}" for s in samples]

    def images() -> Iterable[np.ndarray]:
        rng = np.random.default_rng([seed, SHIFTS.index(shift)])
        for s in samples:
            yield shift_image(decode_pixels(s.path), shift, rng)

    return cached_features(model, name, names, images, cache)


def _synthetic(model: Any, seed: int, kind: str, name: str, cache: Path | None) -> Features:
    images = [img for k, img in no_anatomy_images(seed) if k == kind]
    names = [f"{kind}|{seed}|{i}" for i in range(len(images))]
    return cached_features(model, name, names, lambda: iter(images), cache)


def _files(model: Any, root: Path, files: Sequence[str], name: str, cache: Path | None) -> Features:
    from cxr_imaging import load_image

    present = [f for f in files if (root / f).is_file()]
    return cached_features(
        model,
        name,
        present,
        lambda: (np.asarray(load_image(root / f).pixels, np.float32) for f in present),
        cache,
    )


def load_image_sets(
    model: Any,
    data: Path,
    dicom_dir: Path | None,
    seed: int,
    cache: Path | None,
    train_filter: str = "split=train",
    train_limit: int | None = None,
    inversion_limit: int | None = INVERSION_LIMIT,
) -> ImageSets:
    """Features of every set (cached): train, dev, and the named evaluation sets.

    Sets whose name starts with ``select:`` are built from dev images (50 per shift) and
    another seed and are the ones the method is chosen on; ``report:`` sets are the card's
    table."""
    dev = _reference(model, data, "split=test,site_fold=dev", "dev", cache)
    sets: dict[str, Features] = {}
    sets["report:check (in distribution)"] = _load_kermany(
        model, data, "split=test,site_fold=check", "check", cache
    )
    sets["report:check as DICOM, no window (in distribution)"] = _load_kermany(
        model, data, "split=test,site_fold=check", "check", cache, dicom=True
    )
    if dicom_dir is not None:
        sets["report:adult chest films"] = _files(
            model, dicom_dir, ADULT_CHEST_FILES, "adult", cache
        )
        sets["report:RSNA opacity film of a 6-year-old"] = _files(
            model, dicom_dir, CHILD_FILES, "child6", cache
        )
        sets["report:other radiographs (not chest)"] = _files(
            model, dicom_dir, OTHER_FILES, "other", cache
        )
    for kind in ("gradient", "noise", "test pattern"):
        sets[f"report:{kind}"] = _synthetic(model, seed, kind, kind.replace(" ", "-"), cache)
        sets[f"select:{kind}"] = _synthetic(
            model, seed + 1, kind, "sel-" + kind.replace(" ", "-"), cache
        )
    for shift in SHIFTS:
        slug = shift.replace(" ", "-")
        sets[f"report:check, {shift}"] = _shifted(
            model, data, "split=test,site_fold=check", shift, seed, f"check-{slug}", cache
        )
        sets[f"select:dev, {shift}"] = _shifted(
            model, data, "split=test,site_fold=dev", shift, seed + 1, f"dev-{slug}", cache, 50
        )
    train = _reference(model, data, train_filter, "train", cache, train_limit, seed)
    train_inverted = _train_inverted(model, data, train_filter, seed, cache, inversion_limit)
    return ImageSets(train, dev, sets, train_inverted)


def _train_inverted(
    model: Any,
    data: Path,
    train_filter: str,
    seed: int,
    cache: Path | None,
    limit: int | None,
) -> Features:
    """A seeded ``limit`` of the train images, greyscale-inverted (the detector's positives;
    its negatives are every train image the distance is fitted on)."""
    return _shifted(
        model,
        data,
        train_filter,
        "inverted greyscale",
        seed,
        "train-inverted-greyscale",
        cache,
        limit,
    )


def fit_candidate(method: str, params: dict[str, Any], train: Features) -> dict[str, np.ndarray]:
    if method == "mahalanobis":
        if train.labels is None:
            raise ValueError("mahalanobis needs the training labels")
        layers = tuple(params.get("layers", ()))
        if layers:
            return fit_ensemble(
                train.features,
                train.labels,
                [train.stages[n] for n in layers],
                params.get("components", 64),
            )
        return fit_mahalanobis(
            train.features,
            train.labels,
            params.get("components", 64),
            normalise=bool(params.get("normalise", 1)),
        )
    if method == "knn":
        return fit_knn(train.features, params.get("k", 10))
    return {}


def candidate_distances(
    method: str, arrays: dict[str, np.ndarray], feats: Features, layers: Sequence[str] = ()
) -> np.ndarray:
    from cxr_model.distribution import DistributionCheck

    if method == "energy":
        return energy(feats.logits)
    check = DistributionCheck(method, "", "", math.inf, arrays, layers=tuple(layers))
    return check.distances(feats.vector(layers))


def compare(images: ImageSets, pass_share: float = 0.99) -> list[dict[str, Any]]:
    """Every candidate: threshold(s) on dev, then share passing (in distribution) or caught
    (every other set) per set; sets of at most 10 images keep each image's figures."""
    rows: list[dict[str, Any]] = []
    for name, method, params in CANDIDATES:
        layers = tuple(params.get("layers", ()))
        arrays = fit_candidate(method, params, images.train)
        dev_d = candidate_distances(method, arrays, images.dev, layers)
        inv: dict[str, np.ndarray] | None = None
        t_inv = math.inf
        if params.get("inversion"):
            if images.train_inverted is None:
                raise ValueError("the inversion detector needs the inverted train images")
            inv = fit_inversion(images.train.features, images.train_inverted.features)
            threshold, t_inv = choose_thresholds(
                dev_d, inversion_scores(inv, images.dev.features), pass_share
            )
        else:
            threshold = choose_threshold(dev_d, pass_share)

        def scores(feats: Features, inv: Any = inv) -> np.ndarray:
            if inv is None:
                return np.full(len(feats.names), -math.inf)
            return inversion_scores(inv, feats.features)

        dev_out = (dev_d > threshold) | (scores(images.dev) > t_inv)
        row: dict[str, Any] = {
            "name": name,
            "method": method,
            "params": params,
            "threshold": threshold,
            "inversion_threshold": t_inv if inv is not None else None,
            "dev_pass": float(np.mean(~dev_out)),
            "sets": {},
        }
        margins: list[np.ndarray] = []
        for set_name, feats in images.sets.items():
            d = candidate_distances(method, arrays, feats, layers)
            s = scores(feats)
            if set_name.startswith("select:"):
                margins.append(d / threshold)
            out = (d > threshold) | (s > t_inv)
            in_dist = "in distribution" in set_name
            share = float(np.mean(~out)) if in_dist else float(np.mean(out))
            row["sets"][set_name] = {"n": len(d), "share": share, "passing": in_dist}
            if len(d) <= 10:
                row["sets"][set_name]["images"] = [
                    {
                        "name": Path(n).name,
                        "distance": float(di),
                        "inversion": None if inv is None else float(si),
                        "outside": bool(o),
                    }
                    for n, di, si, o in zip(feats.names, d, s, out, strict=True)
                ]
        selection = [v["share"] for k, v in row["sets"].items() if k.startswith("select:")]
        row["selection_min_caught"] = min(selection) if selection else None
        # a margin needs a positive distance threshold (not the energy score's)
        row["selection_margin"] = (
            float(np.median(np.concatenate(margins))) if margins and threshold > 0 else None
        )
        rows.append(row)
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the highest worst-case share caught over the ``select:`` sets
    (dev images, another seed); among those tied, the one whose ``select:`` images lie
    furthest over its distance threshold (median distance / threshold: the margin a small
    change in the pipeline would have to eat); then the earlier (smaller) candidate."""
    shipped = [r for r in rows if r["method"] != "energy"]
    return max(
        shipped,
        key=lambda r: (
            round(r["selection_min_caught"], 3),
            round(r["selection_margin"] or 0.0, 2),
            -rows.index(r),
        ),
    )


def markdown_table(rows: list[dict[str, Any]], prefix: str = "report:") -> str:
    """Share passing (check) or caught (every other set) per candidate and set."""
    names = [k for k in rows[0]["sets"] if k.startswith(prefix)]
    head = "| set | n | " + " | ".join(r["name"] for r in rows) + " |"
    lines = [head, "|---|---|" + "---|" * len(rows)]
    for k in names:
        n = rows[0]["sets"][k]["n"]
        verb = "passing" if rows[0]["sets"][k]["passing"] else "caught"
        cells = [f"{100 * r['sets'][k]['share']:.1f} %" for r in rows]
        lines.append(f"| {k.removeprefix(prefix)} ({verb}) | {n} | " + " | ".join(cells) + " |")
    lines.append(
        "| threshold (dev: >= 99 % pass) | | "
        + " | ".join(
            f"{r['threshold']:.4g}"
            + (
                f" / inv. {r['inversion_threshold']:.3g}"
                if r.get("inversion_threshold") is not None
                else ""
            )
            for r in rows
        )
        + " |"
    )
    if prefix == "select:":
        lines.append(
            "| worst case / median distance over threshold (chooses) | | "
            + " | ".join(
                f"{100 * r['selection_min_caught']:.0f} % / "
                + ("n/a" if r["selection_margin"] is None else f"{r['selection_margin']:.2f}")
                for r in rows
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


# --- Commands -----------------------------------------------------------------------------


def fit(
    model: Any,
    data: Path,
    out: Path,
    *,
    method: str = "mahalanobis",
    params: dict[str, Any] | None = None,
    pass_share: float = 0.99,
    cache: Path | None = None,
    seed: int = 20261206,
    train_limit: int | None = None,
    inversion: bool = True,
    inversion_limit: int | None = INVERSION_LIMIT,
    command: str = "",
    fit_filter: str = FIT_FILTER,
    threshold_filter: str = THRESHOLD_FILTER,
) -> Path:
    """Fit ``method`` (and, with ``inversion``, the inversion detector) on the ``fit_filter``
    rows (the model's training images), choose the threshold(s) on the ``threshold_filter``
    rows (in-distribution films of the site) and write ``ood.json`` + ``ood.npz`` into
    ``out`` (the model's weights folder)."""
    from cxr_model.distribution import DistributionCheck

    params = dict(params or {})
    layers = tuple(params.get("layers", ()))
    dev = _reference(model, data, threshold_filter, "dev", cache)
    train = _reference(model, data, fit_filter, "train", cache, train_limit, seed)
    arrays = fit_candidate(method, params, train)
    dev_d = candidate_distances(method, arrays, dev, layers)
    t_inv: float | None = None
    inversion_meta: dict[str, Any] = {}
    if inversion:
        inverted = _train_inverted(model, data, fit_filter, seed, cache, inversion_limit)
        arrays = {**arrays, **fit_inversion(train.features, inverted.features)}
        dev_s = inversion_scores(arrays, dev.features)
        threshold, t_inv = choose_thresholds(dev_d, dev_s, pass_share)
        inversion_meta = {
            "method": "logistic regression on the L2-normalised pooled features (C=1)",
            "fit_filter": f"{fit_filter}, both views (0) and a seeded subsample of them "
            "greyscale-inverted, 1 - x (1)",
            "n_normal": len(train.names),
            "n_inverted": len(inverted.names),
            "inversion_limit": inversion_limit,
            "threshold_rule": f"largest inversion score of {threshold_filter} (no such image "
            "is called inverted); read by OR with the distance",
            "why": "inversion is a known failure of acquisition and export (a MONOCHROME1 "
            "film decoded or exported as MONOCHROME2); the distance alone misses most "
            "inverted films",
        }
    else:
        threshold = choose_threshold(dev_d, pass_share)
        dev_s = np.full(len(dev_d), -math.inf)
    dev_pass = float(np.mean((dev_d <= threshold) & (dev_s <= (t_inv or math.inf))))
    check = DistributionCheck(
        method=method,
        model_sha256=model.contract.sha256,
        model_version=model.contract.version,
        threshold=threshold,
        arrays=arrays,
        fitted_on={
            "data": os.path.relpath(data),  # no machine path in the shipped file
            "fit_filter": fit_filter,
            "views": "each image twice: as its file decodes (JPEG, value / 255) and as the "
            "DICOM decoder shows it in an 8-bit MONOCHROME2 file without a window "
            "(percentile stretch)",
            "n_fit": len(train.names),
            "train_limit": train_limit,
            "seed": seed,
            "threshold_filter": f"{threshold_filter}, both views",
            "n_threshold": len(dev.names),
            "features": "pooled features of the final linear layer's input "
            f"({train.features.shape[1]} numbers)"
            + (
                f" and the spatial averages of the outputs of {', '.join(layers)} "
                f"({sum(train.stages[n].shape[1] for n in layers)} numbers)"
                if layers
                else ""
            )
            + ", same forward pass as the score",
            "params": {**params, "layers": list(layers)} if layers else params,
            "command": command,
        },
        threshold_rule=f"smallest distance with >= {pass_share:.0%} of {threshold_filter} at "
        "or below" + (" (and at or below the inversion threshold)" if inversion else ""),
        extra={"dev_pass": dev_pass},
        inversion_threshold=t_inv,
        inversion=inversion_meta,
        layers=layers,
    )
    out.mkdir(parents=True, exist_ok=True)
    return check.save(out)


def evaluate_all(
    model: Any,
    data: Path,
    dicom_dir: Path | None,
    *,
    pass_share: float = 0.99,
    cache: Path | None = None,
    seed: int = 20261206,
    train_limit: int | None = None,
    inversion_limit: int | None = INVERSION_LIMIT,
) -> dict[str, Any]:
    """Compare :data:`CANDIDATES` on every set; the record the card's table comes from."""
    images = load_image_sets(
        model,
        data,
        dicom_dir,
        seed,
        cache,
        train_limit=train_limit,
        inversion_limit=inversion_limit,
    )
    rows = compare(images, pass_share)
    chosen = choose(rows)
    return {
        "model_version": model.contract.version,
        "model_sha256": model.contract.sha256,
        "n_train": len(images.train.names),
        "n_dev": len(images.dev.names),
        "seed": seed,
        "pass_share": pass_share,
        "candidates": rows,
        "chosen": chosen["name"],
        "selection_rule": "highest worst-case share caught over the select: sets (50 dev "
        "images per synthetic shift and no-anatomy images, seed + 1); ties: the larger median "
        "distance / threshold over those sets; never the report sets",
        "report_table": markdown_table(rows),
        "selection_table": markdown_table(rows, "select:"),
    }


def main_fit(args: Any) -> int:
    import json
    import shlex

    from cxr_model import WEIGHTS_DIR, load_model

    layers = tuple(n for n in args.stages.split(",") if n)
    if layers and (args.method != "mahalanobis" or args.raw):
        print(
            "--stages needs --method mahalanobis on L2-normalised features (no --raw); "
            "pass --stages '' for the pooled features alone",
            file=sys.stderr,
        )
        return 2
    model = load_model(args.model or WEIGHTS_DIR, args.device)
    unknown = [n for n in layers if n not in available_stages(model.net)]
    if unknown:
        print(
            f"this network has no stage {', '.join(unknown)}; it has "
            f"{', '.join(available_stages(model.net)) or 'none of ' + ', '.join(STAGES)}",
            file=sys.stderr,
        )
        return 2
    params: dict[str, Any] = (
        {"components": args.components, "normalise": int(not args.raw)}
        if args.method == "mahalanobis"
        else {"k": args.k}
    )
    if layers:
        params["layers"] = layers
    path = fit(
        model,
        args.data,
        args.out or args.model or WEIGHTS_DIR,
        method=args.method,
        params=params,
        pass_share=args.pass_share,
        cache=args.cache,
        seed=args.seed,
        train_limit=args.train_limit,
        inversion=not args.no_inversion,
        inversion_limit=args.inversion_limit,
        command=shlex.join(["cxr-triage", *sys.argv[1:]]),
        fit_filter=args.fit_filter,
        threshold_filter=args.threshold_filter,
    )
    print(json.dumps({"written": str(path), **json.loads(path.read_text())}, indent=2))
    return 0


def main_evaluate(args: Any) -> int:
    import json

    from cxr_model import WEIGHTS_DIR, load_model

    model = load_model(args.model or WEIGHTS_DIR, args.device)
    record = evaluate_all(
        model,
        args.data,
        args.dicom_dir,
        pass_share=args.pass_share,
        cache=args.cache,
        seed=args.seed,
        train_limit=args.train_limit,
        inversion_limit=args.inversion_limit,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood_evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "ood_evaluation.md").write_text(
        f"Chosen: {record['chosen']}\n\n" + record["report_table"]
    )
    print(record["report_table"])
    print(f"chosen: {record['chosen']} ({record['selection_rule']})")
    return 0


def register(subparsers: Any, fmt: Any, disclaimer: str) -> None:
    """``ood-fit`` and ``ood-evaluate`` (called from :func:`training.cli.register`)."""

    def common(p: Any) -> None:
        p.add_argument(
            "--data",
            type=Path,
            required=True,
            help="labels.csv (Kermany, or a site's answers export with a split column)",
        )
        p.add_argument("--model", type=Path, default=None, help="weights folder (default: shipped)")
        p.add_argument("--pass-share", type=float, default=0.99, help="dev share that must pass")
        p.add_argument("--seed", type=int, default=20261206, help="every random choice")
        p.add_argument(
            "--train-limit", type=int, default=None, help="fit on a seeded subsample of train"
        )
        p.add_argument(
            "--inversion-limit",
            type=int,
            default=INVERSION_LIMIT,
            help="train images (seeded) inverted to fit the inversion detector",
        )
        p.add_argument(
            "--cache",
            type=Path,
            default=Path("/tmp/cxr-ood-cache"),
            help="feature cache folder (outside the repository)",
        )
        p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")

    p = subparsers.add_parser(
        "ood-fit",
        formatter_class=fmt,
        help="fit the image-based distribution check (ood.json next to the weights)",
        description="Fit the distance from the training distribution on the model's features "
        "of its training images (--fit-filter), choose its threshold so that --pass-share of "
        "the site's in-distribution films (--threshold-filter) passes, and write OUT/ood.json "
        "+ ood.npz. Every image is read twice: as its file decodes and as an 8-bit DICOM "
        "without a window. A model without this file cannot be activated without "
        f"--accept-no-image-check. {disclaimer}",
    )
    common(p)
    p.add_argument(
        "--fit-filter",
        default=FIT_FILTER,
        help="rows the model was trained on (a site-adapted model: its own training rows)",
    )
    p.add_argument(
        "--threshold-filter",
        default=THRESHOLD_FILTER,
        help="in-distribution rows the model was not trained on, e.g. split=cal",
    )
    p.add_argument("--method", choices=["mahalanobis", "knn"], default="mahalanobis")
    p.add_argument("--components", type=int, default=64, help="mahalanobis: PCA components")
    p.add_argument(
        "--raw",
        action="store_true",
        help="mahalanobis: raw features (default: L2-normalised, as compared in the card)",
    )
    p.add_argument("--k", type=int, default=10, help="knn: which neighbour")
    p.add_argument(
        "--stages",
        default=",".join(SHIPPED_STAGES),
        help="mahalanobis: intermediate stages read with the pooled features (a feature "
        "ensemble), comma-separated module names; '' for the pooled features alone",
    )
    p.add_argument(
        "--no-inversion",
        action="store_true",
        help="fit the distance alone (default: also the inversion detector, read by OR)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder (default: the model's)")
    p.set_defaults(func=main_fit)

    p = subparsers.add_parser(
        "ood-evaluate",
        formatter_class=fmt,
        help="compare distribution checks on check images, adult films, shifts",
        description="Compare Mahalanobis, kNN and energy on site_fold=check (share passing), "
        "adult chest films, images without anatomy and synthetic shifts of check images "
        "(share caught); writes OUT/ood_evaluation.json and .md (the card's table). "
        f"{disclaimer}",
    )
    common(p)
    p.add_argument("--dicom-dir", type=Path, default=None, help="shared/data/dicom folder")
    p.add_argument("--out", type=Path, default=Path("ood-evaluation"), help="output folder")
    p.set_defaults(func=main_evaluate)
