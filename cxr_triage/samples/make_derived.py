"""Rebuild the bundled demo/test samples from the shared data folder.

Usage::

    python cxr_triage/samples/make_derived.py --data ../shared/data [--out cxr_triage/samples]

It is deterministic: running it twice gives byte-identical files.

* Real DICOM files are copied byte for byte under non-identifying names (``REAL``),
  except ``fake-monochrome1.dcm``: torchxrayvision's Fake_MONOHR1.dcm reuses the SOP
  Instance UID of its MONOCHROME2 twin (``siim-chest-1.dcm``), so its SOP Instance UID
  (and File Meta Media Storage SOP Instance UID) is rewritten to a UID derived from
  the file's sha256; pixel data and every other element are kept.
* Six Kermany JPEGs from the ``site_fold=dev`` half of ``cxr/test`` (3 NORMAL,
  3 PNEUMONIA, distinct patients) are wrapped as CR Image Storage, Explicit VR Little
  Endian, MONOCHROME2 8-bit, one study each, UIDs derived from a fixed root plus the
  JPEG's sha256. A LINEAR_EXACT window (centre 127.5, width 255) makes
  ``cxr_imaging.decode_dataset`` return exactly ``jpeg.convert("L") / 255``, the
  same values training sees for the JPEG itself.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

logger = logging.getLogger("make_derived")

#: Fixed UID root for everything this script generates (pydicom's registered root).
UID_ROOT = PYDICOM_ROOT_UID

#: (sample name, path under <data>/dicom) copied byte for byte.
REAL: tuple[tuple[str, str], ...] = (
    ("rsna-normal-1.dcm", "rsna/009eb222-eabc-4150-8121-d5a6d06b8ebf.dcm"),
    ("rsna-opacity-1.dcm", "rsna/00aecb01-a116-45a2-956c-08d2fa55433f.dcm"),
    (
        "nih-nofinding-1.dcm",
        "nih/1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
    ),
    (
        "siim-chest-1.dcm",
        "robustness/siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    ),
    ("rg1-j2k-monochrome1-16bit.dcm", "robustness/RG1_J2KI.dcm"),
    ("rg3-j2k-extremity.dcm", "robustness/RG3_J2KI.dcm"),
    ("ct-small.dcm", "robustness/CT_small.dcm"),
    ("nm-jpeg-extended.dcm", "robustness/JPEG-lossy.dcm"),
    ("ot-abdomen.dcm", "robustness/nhsx_sample_abdomen_OT.dcm"),
)
FAKE_MONOCHROME1 = ("fake-monochrome1.dcm", "robustness/Fake_MONOHR1.dcm")
KERMANY_PER_CLASS = 3


def _uid(sha256: str, role: str) -> UID:
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[sha256, role])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_fake_monochrome1(src: Path, dst: Path) -> None:
    """Copy Fake_MONOHR1.dcm with a SOP Instance UID of its own (see module docstring)."""
    ds = pydicom.dcmread(src)
    new_uid = _uid(_sha256(src), "sop")
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    ds.save_as(dst, enforce_file_format=True)


def wrap_jpeg(jpeg: Path, dst: Path, index: int) -> None:
    """Wrap one Kermany JPEG as a deterministic CR DICOM (no patient name)."""
    sha = _sha256(jpeg)
    with Image.open(jpeg) as img:
        grey = np.asarray(img.convert("L"), dtype=np.uint8)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(sha, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_ROOT + "1")
    meta.ImplementationVersionName = "CXR_TRIAGE_0"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = "20260101"
    ds.StudyTime = f"{index:02d}0000"
    ds.AccessionNumber = f"DEMO{index:04d}"
    ds.Modality = "CR"
    ds.Manufacturer = "cxr-triage sample wrapper"
    ds.StudyDescription = "CHEST PA (derived demo sample)"
    ds.SeriesDescription = "Derived from Kermany et al. 2018, CC BY 4.0"
    ds.DerivationDescription = f"Kermany JPEG sha256 {sha} wrapped as DICOM"
    ds.PatientID = f"DERIVED-{index:04d}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = _uid(sha, "study")
    ds.SeriesInstanceUID = _uid(sha, "series")
    ds.StudyID = f"{index}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in grey.shape)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = 127.5
    ds.WindowWidth = 255
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.PixelData = grey.tobytes()
    ds.save_as(dst, enforce_file_format=True)


def _kermany_rows(data: Path) -> list[dict[str, str]]:
    with (data / "cxr" / "labels.csv").open(newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["split"] == "test" and r.get("site_fold", "").strip() == "dev"
        ]
    rows.sort(key=lambda r: r["path"])
    chosen: list[dict[str, str]] = []
    for label in ("0", "1"):
        patients: set[str] = set()
        for r in rows:
            if r["label"] == label and r["patient_id"] not in patients:
                patients.add(r["patient_id"])
                chosen.append(r)
                if len(patients) == KERMANY_PER_CLASS:
                    break
    return chosen


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data", type=Path, required=True, help="the shared data folder (holds dicom/ and cxr/)"
    )
    parser.add_argument("--out", type=Path, default=here)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.out
    (out / "derived").mkdir(parents=True, exist_ok=True)

    for name, rel in REAL:
        shutil.copyfile(args.data / "dicom" / rel, out / name)
        logger.info("copied %s", name)
    name, rel = FAKE_MONOCHROME1
    rewrite_fake_monochrome1(args.data / "dicom" / rel, out / name)
    logger.info("copied %s with a new SOP Instance UID", name)

    per_class: dict[str, int] = {}
    for index, row in enumerate(_kermany_rows(args.data), start=1):
        kind = "pneumonia" if row["label"] == "1" else "normal"
        per_class[kind] = per_class.get(kind, 0) + 1
        dst = out / "derived" / f"kermany-{kind}-{per_class[kind]}.dcm"
        wrap_jpeg(args.data / "cxr" / row["path"], dst, index)
        logger.info("wrapped %s -> %s", row["path"], dst.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
