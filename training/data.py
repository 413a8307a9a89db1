"""Dataset specifications, decoding and the decoded-image cache.

``--data`` accepts:

* a folder in the Kaggle/Mendeley layout ``<root>/<split>/<NORMAL|PNEUMONIA>/*`` (pick splits
  with ``--filter split=train``), or a folder ``<root>/<NORMAL|PNEUMONIA>/*``;
* a ``labels.csv`` with at least ``path,label`` (paths relative to the CSV); ``--filter
  split=test,site_fold=dev`` keeps rows whose columns equal the given values (``a|b`` = either);
* an RSNA-style CSV with ``patientId,Target``; DICOM files ``<patientId>.dcm`` next to it or in
  ``--image-dir``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_model.preprocess import resize_pixels

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".tif", ".tiff", ""}
CLASS_DIRS = {"NORMAL": 0, "PNEUMONIA": 1}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    subtype: str = ""
    patient_id: str = ""


def parse_filter(text: str | None) -> dict[str, set[str]]:
    """``"split=test,site_fold=dev"`` -> ``{"split": {"test"}, "site_fold": {"dev"}}``."""
    out: dict[str, set[str]] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"filter term {part!r} is not KEY=VALUE")
        out.setdefault(key.strip(), set()).update(v.strip() for v in value.split("|"))
    return out


def _keep(row: dict[str, str], flt: dict[str, set[str]]) -> bool:
    return all(row.get(k, "") in vals for k, vals in flt.items())


def _from_labels_csv(path: Path, flt: dict[str, set[str]], image_dir: Path | None) -> list[Sample]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return []
    base = image_dir or path.parent
    samples: list[Sample] = []
    if "patientId" in rows[0] and "Target" in rows[0]:  # RSNA style, one row per box
        labels: dict[str, int] = {}
        for row in rows:
            if _keep(row, flt):
                pid = row["patientId"]
                labels[pid] = max(labels.get(pid, 0), int(row["Target"]))
        for pid, label in labels.items():
            samples.append(Sample(base / f"{pid}.dcm", label, "", pid))
        return samples
    for row in rows:
        if not _keep(row, flt):
            continue
        label = int(row["label"])
        if label not in (0, 1):
            continue
        samples.append(
            Sample(base / row["path"], label, row.get("subtype", ""), row.get("patient_id", ""))
        )
    return samples


def _from_folder(root: Path, flt: dict[str, set[str]]) -> list[Sample]:
    splits = flt.get("split")
    samples: list[Sample] = []
    class_roots: list[Path] = []
    if any((root / c).is_dir() for c in CLASS_DIRS):
        class_roots = [root]
    else:
        class_roots = [d for d in sorted(root.iterdir()) if d.is_dir()]
        if splits is not None:
            class_roots = [d for d in class_roots if d.name in splits]
    for split_root in class_roots:
        for cls, label in CLASS_DIRS.items():
            folder = split_root / cls
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    subtype = ""
                    low = f.name.lower()
                    if label == 1:
                        subtype = (
                            "bacteria" if "bacteria" in low else "virus" if "virus" in low else ""
                        )
                    samples.append(Sample(f, label, subtype, ""))
    return samples


def load_samples(
    data: str | Path, flt: str | None = None, image_dir: Path | None = None
) -> list[Sample]:
    """Resolve a ``--data`` argument (+ ``--filter``) to labelled samples."""
    path = Path(data)
    terms = parse_filter(flt)
    if path.is_file():
        samples = _from_labels_csv(path, terms, image_dir)
    elif path.is_dir():
        if (path / "labels.csv").is_file():
            samples = _from_labels_csv(path / "labels.csv", terms, image_dir)
        else:
            samples = _from_folder(path, terms)
    else:
        raise FileNotFoundError(f"--data {path} does not exist")
    if not samples:
        raise ValueError(f"no labelled samples in {path} with filter {flt!r}")
    return samples


def decode_pixels(path: Path) -> np.ndarray:
    """Decode any supported file to float32 HxW [0, 1] via :func:`cxr_imaging.load_image`."""
    from cxr_imaging import load_image

    return np.asarray(load_image(path).pixels, dtype=np.float32)


def _cache_key(samples: Sequence[Sample], input_size: int) -> str:
    h = hashlib.sha256(f"v1|{input_size}".encode())
    for s in samples:
        st = s.path.stat()
        h.update(f"{s.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_resized(
    samples: Sequence[Sample], input_size: int, cache_dir: Path | None = None
) -> np.ndarray:
    """Decode + resize every sample once -> float32 (N, S, S) in [0, 1]; cached on disk."""
    cache_file = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_file = cache_dir / f"resized-{_cache_key(samples, input_size)}.npy"
        if cache_file.is_file():
            logger.info("using decoded cache %s", cache_file)
            return np.load(cache_file)
    out = np.empty((len(samples), input_size, input_size), dtype=np.float32)
    for i, s in enumerate(samples):
        out[i] = resize_pixels(decode_pixels(s.path), input_size)
    if cache_file is not None:
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache_file)
    return out
