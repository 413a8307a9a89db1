"""The shipped model: sha256 matches its card, scoring, Grad-CAM, calibration, overlays."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_common.clinical import DISCLAIMER
from cxr_imaging import load_image
from cxr_model import (
    WEIGHTS_DIR,
    CalibratedScore,
    CalibrationMismatchError,
    ModelIntegrityError,
    ScoringModel,
    load_calibration,
    load_model,
    read_contract,
    render_overlay_png,
    sha256_file,
    verify_weights,
)
from training.predict import predict_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"
POSITIVE = FIXTURES / "train/PNEUMONIA/person1002_bacteria_2933.jpeg"
NEGATIVE = FIXTURES / "train/NORMAL/IM-0115-0001.jpeg"


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    return load_model(device="cpu")


def test_sha256_matches_contract_card_and_calibration() -> None:
    contract = read_contract(WEIGHTS_DIR)
    assert sha256_file(WEIGHTS_DIR / contract.weights_file) == contract.sha256
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    assert contract.sha256 in card
    assert contract.version in card
    cal = json.loads((WEIGHTS_DIR / "calibration.json").read_text())
    assert cal["model_sha256"] == contract.sha256
    # one clinical-use statement, the same in every file the model ships with
    assert cal["disclaimer"] == DISCLAIMER == contract.to_json()["disclaimer"]
    assert json.loads((WEIGHTS_DIR / "model.json").read_text())["disclaimer"] == DISCLAIMER
    assert (WEIGHTS_DIR / contract.weights_file).stat().st_size < 25 * 2**20
    assert contract.labels == ("NORMAL", "PNEUMONIA")
    assert re.fullmatch(r"[0-9a-f]{64}", contract.sha256)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    for f in ("model.json", "weights.pt"):
        (tmp_path / f).write_bytes((WEIGHTS_DIR / f).read_bytes())
    with (tmp_path / "weights.pt").open("r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ModelIntegrityError, match="restore the model folder") as info:
        load_model(tmp_path, device="cpu")
    contract = read_contract(tmp_path)
    assert f"model.json declares {contract.sha256[:12]}" in str(info.value)
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(ModelIntegrityError, match="copy the model folder whole"):
        verify_weights(tmp_path, contract)
    assert verify_weights(WEIGHTS_DIR, read_contract(WEIGHTS_DIR)).name == "weights.pt"


def test_score_batch_with_and_without_heatmaps(model: ScoringModel) -> None:
    batch = torch.stack([model.preprocess(load_image(p).pixels) for p in (POSITIVE, NEGATIVE)])
    with_cam = model.score_batch(batch, with_heatmaps=True)
    plain = model.score_batch(batch, with_heatmaps=False)
    assert len(with_cam) == len(plain) == 2
    for a, b in zip(with_cam, plain, strict=True):
        assert a.logit == pytest.approx(b.logit, abs=1e-3)
        assert b.cam is None
        assert a.cam is not None
        assert a.cam.shape == (224, 224)
        assert a.cam.dtype == np.float32
        assert float(a.cam.min()) >= 0.0
        assert float(a.cam.max()) <= 1.0
    assert with_cam[0].logit > with_cam[1].logit


def test_shipped_calibration(model: ScoringModel) -> None:
    cal = load_calibration(model_sha256=model.contract.sha256)
    assert cal.version
    assert 0.0 < cal.threshold < 1.0
    assert cal.flag(cal.probability(cal.logit_threshold))
    assert cal.probability(5.0) > cal.probability(-5.0)
    with pytest.raises(CalibrationMismatchError):
        load_calibration(model_sha256="0" * 64)


def test_overlay_png_has_no_metadata() -> None:
    pixels = np.linspace(0, 1, 600 * 400, dtype=np.float32).reshape(600, 400)
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    flagged = CalibratedScore(logit=5.0, probability=0.99, threshold=0.5, flagged=True)
    png = render_overlay_png(pixels, cam, burned_in=False, score=flagged, max_size=256)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    assert max(img.size) == 256
    assert img.mode == "RGB"
    assert not img.info.get("text")
    assert b"tEXt" not in png
    assert b"iTXt" not in png


def test_predict_orders_positive_above_negative(tmp_path: Path) -> None:
    res = predict_paths([POSITIVE, NEGATIVE], heatmap_dir=tmp_path, device="cpu")
    pos, neg = res
    assert pos["probability"] > neg["probability"]
    assert pos["flagged"]
    assert not neg["flagged"]
    assert pos["eligible"]
    assert neg["eligible"]
    assert Path(pos["heatmap"]).is_file()
    assert pos["disclaimer"] == DISCLAIMER
