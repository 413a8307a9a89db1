"""Build small, valid DICOM files in code (no patient data) for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

TEST_ROOT = "1.2.826.0.1.3680043.10.1024."


def chest_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 8-bit image with two darker 'lung' ovals."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.35 * (
        np.exp(-(((xx - 0.32) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
        + np.exp(-(((xx - 0.68) / 0.13) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    )
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


KERMANY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kermany"


def kermany_pixels(index: int = 0) -> np.ndarray:
    """A real paediatric chest film (``tests/fixtures/kermany``, CC BY 4.0) as 8-bit pixels,
    for tests whose score must triage: :func:`chest_like` has no anatomy, so the model's
    distribution check (issue 21) puts it outside the validated population (shadow)."""
    from PIL import Image

    films = sorted(KERMANY_FIXTURES.rglob("*.jpeg"))
    with Image.open(films[index % len(films)]) as img:
        pixels: np.ndarray = np.asarray(img.convert("L"), dtype=np.uint8)
    return pixels


def make_dataset(
    pixels: np.ndarray | None = None,
    *,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = ComputedRadiographyImageStorage,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    accession: str = "TEST0001",
) -> Dataset:
    pixels = chest_like() if pixels is None else pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid(prefix=TEST_ROOT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid(prefix=TEST_ROOT)
    ds.SeriesInstanceUID = generate_uid(prefix=TEST_ROOT)
    ds.PatientID = "TEST-ONLY"
    ds.AccessionNumber = accession
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def corrupt_j2k(path: Path, **kwargs: object) -> Path:
    """A valid header claiming JPEG 2000 pixel data that is garbage: undecodable."""
    import struct

    from pydicom.encaps import encapsulate

    ds = make_dataset(**kwargs)  # type: ignore[arg-type]
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    # SOC + a SIZ that matches the header (so the size check lets it through to the
    # decoder), then garbage where the tiles should be.
    rows, columns = int(ds.Rows), int(ds.Columns)
    siz = struct.pack(
        ">HHIIIIIIIIHBBB", 41, 0, columns, rows, 0, 0, columns, rows, 0, 0, 1, 7, 1, 1
    )
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + siz + b"\x00garbage" * 64])
    ds["PixelData"].VR = "OB"
    return write(ds, path)
