"""A 16-bit, non-square radiograph in place of a seeded study's stored file, for the
full-resolution viewer's tests (``tests.web_server.seed_worklist`` writes 256 px 8-bit
files at ``storage/<study>/<sop>.dcm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicom_factory import write
from tests.web_server import PATIENT_ID, PATIENT_NAME

ROWS, COLUMNS = 1200, 960
INTERCEPT = -1024
WINDOW = (1200.0, 2400.0)  # centre, width in modality units


def sixteen_bit_pixels(rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """A smooth 12-bit chest-like field (two darker lungs, a bright spine), uint16."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float64)
    y, x = yy / rows, xx / columns
    lungs = np.exp(-(((x - 0.3) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2)) + np.exp(
        -(((x - 0.7) / 0.14) ** 2 + ((y - 0.5) / 0.28) ** 2)
    )
    spine = np.exp(-(((x - 0.5) / 0.05) ** 2))
    value = 3000 - 2200 * lungs + 900 * spine + 400 * y
    return np.clip(value, 0, 4095).astype(np.uint16)


def replace_with_sixteen_bit(
    storage: Path, study_uid: str, sop_uid: str, rows: int = ROWS, columns: int = COLUMNS
) -> np.ndarray:
    """Overwrite the seeded file of ``sop_uid`` with a 12-bit MONOCHROME2 CR image
    (RescaleIntercept -1024, one LINEAR window); returns its stored values."""
    path = storage / study_uid / f"{sop_uid}.dcm"
    old = pydicom.dcmread(path)
    pixels = sixteen_bit_pixels(rows, columns)
    ds = Dataset()
    ds.file_meta = old.file_meta
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "AccessionNumber",
        "Modality",
        "BodyPartExamined",
        "ViewPosition",
        "PatientSex",
        "PatientBirthDate",
        "StudyDate",
    ):
        if keyword in old:
            setattr(ds, keyword, old.get(keyword))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, INTERCEPT, "US"
    ds.WindowCenter, ds.WindowWidth = WINDOW
    ds.PixelData = pixels.tobytes()
    assert ds.SOPInstanceUID == sop_uid  # the same instance, new pixels
    write(ds, path)
    return pixels
