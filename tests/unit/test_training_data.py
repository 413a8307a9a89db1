"""Dataset specifications and preprocessing parity between training and the worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_imaging import load_image
from cxr_model.preprocess import preprocess, scale_tensor
from training.data import load_resized, load_samples, parse_filter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"


def test_folder_layout_with_split_filter() -> None:
    train = load_samples(FIXTURES, "split=train")
    assert len(train) == 8
    assert sum(s.label for s in train) == 4
    assert {s.subtype for s in train if s.label} == {"bacteria", "virus"}
    assert len(load_samples(FIXTURES)) == 9
    assert [s.path.name for s in load_samples(FIXTURES, "split=val")] == [
        "NORMAL2-IM-1427-0001.jpeg"
    ]


def test_labels_csv_filters(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label,split,site_fold,subtype\n"
        "a.jpeg,0,test,dev,\nb.jpeg,1,test,check,virus\nc.jpeg,1,test,dev,bacteria\n"
        "d.jpeg,1,train,,bacteria\n"
    )
    dev = load_samples(csv_path, "split=test,site_fold=dev")
    assert [(s.path.name, s.label) for s in dev] == [("a.jpeg", 0), ("c.jpeg", 1)]
    assert len(load_samples(tmp_path, "site_fold=dev|check")) == 3
    assert parse_filter("split=test, site_fold=dev|check") == {
        "split": {"test"},
        "site_fold": {"dev", "check"},
    }
    with pytest.raises(ValueError, match="no labelled samples"):
        load_samples(csv_path, "split=nope")


def test_rsna_csv(tmp_path: Path) -> None:
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np1,,,,,0\np2,1,2,3,4,1\np2,5,6,7,8,1\n"
    )
    samples = load_samples(tmp_path / "stage_2_train_labels.csv")
    assert [(s.path.name, s.label) for s in samples] == [("p1.dcm", 0), ("p2.dcm", 1)]


def _training_tensor(path: Path) -> torch.Tensor:
    (sample,) = [s for s in load_samples(FIXTURES) if s.path == path]
    return scale_tensor(torch.from_numpy(load_resized([sample], 224, None)))[0]


@pytest.mark.parametrize(
    "rel", ["train/PNEUMONIA/person1004_virus_1686.jpeg", "val/NORMAL/NORMAL2-IM-1427-0001.jpeg"]
)
def test_preprocessing_parity(rel: str, tmp_path: Path) -> None:
    path = FIXTURES / rel
    train_t = _training_tensor(path)
    worker_t = preprocess(load_image(path.read_bytes()).pixels)
    assert train_t.shape == worker_t.shape == (3, 224, 224)
    assert train_t.dtype == worker_t.dtype == torch.float32
    assert torch.equal(train_t, worker_t)
    # cached decode gives the same tensor
    (sample,) = [s for s in load_samples(FIXTURES) if s.path == path]
    cached = load_resized([sample], 224, tmp_path)
    again = load_resized([sample], 224, tmp_path)
    assert np.array_equal(cached, again)
    assert torch.equal(scale_tensor(torch.from_numpy(again))[0], worker_t)


def test_histeq_parity_and_invariance() -> None:
    path = FIXTURES / "val/NORMAL/NORMAL2-IM-1427-0001.jpeg"
    (sample,) = [s for s in load_samples(FIXTURES) if s.path == path]
    resized = torch.from_numpy(load_resized([sample], 224, None))
    train_t = scale_tensor(resized, 3, "histeq")[0]
    pixels = load_image(path).pixels
    assert torch.equal(train_t, preprocess(pixels, 224, 3, "histeq"))
    # a monotone exposure change (gamma) barely moves the equalised input
    gamma = preprocess(pixels**1.6, 224, 3, "histeq")
    assert float((gamma - train_t).abs().mean()) < 0.02
    assert float((preprocess(pixels**1.6) - preprocess(pixels)).abs().mean()) > 0.1


def test_dicom_wrapped_jpeg_matches_jpeg(tmp_path: Path) -> None:
    """The same pixels wrapped in DICOM reach the network identically."""
    path = FIXTURES / "train/NORMAL/IM-0115-0001.jpeg"
    pixels = load_image(path).pixels
    arr = np.round(pixels * 255).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 128, 256  # linear VOI: x -> x / 255
    ds.PixelData = arr.tobytes()
    dcm = tmp_path / "wrapped.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    a = preprocess(load_image(dcm).pixels)
    b = preprocess(pixels)
    assert torch.allclose(a, b, atol=1e-5)
