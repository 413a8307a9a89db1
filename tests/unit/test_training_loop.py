"""A tiny training run on committed images: the loss falls, checkpoints reload identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_model import load_model
from cxr_model.architecture import build_network
from cxr_model.preprocess import scale_tensor
from training.cli import main
from training.data import load_resized, load_samples
from training.train import TrainConfig, predict_logits, train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kermany"


@pytest.mark.slow
def test_tiny_training_run_and_checkpoint_reload(tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(FIXTURES),
        out=str(tmp_path / "run"),
        train_filter="split=train",
        val_filter="split=train",
        backbone="lite0",
        epochs=5,
        batch_size=8,
        lr=1e-3,
        warmup_frac=0.0,
        augment="none",
        input_size=96,
        cache_dir=str(tmp_path / "cache"),
        threads=2,
        seed=7,
    )
    summary = train(cfg)
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == 5
    assert losses[-1] < losses[0] * 0.7, losses

    out = Path(cfg.out)
    ck = torch.load(out / "checkpoint-last.pt", map_location="cpu", weights_only=True)
    net = build_network("tf_efficientnet_lite0")
    net.load_state_dict(ck["model"])
    net = net.to(memory_format=torch.channels_last)
    images = load_resized(load_samples(FIXTURES, "split=train"), 96, None)
    again = predict_logits(net, images, torch.device("cpu"))
    np.testing.assert_array_equal(again, np.asarray(summary["val_logits"], dtype=np.float32))

    # the exported fp16 model loads through the worker's API and matches the fp32 checkpoint
    model = load_model(out / "model-e5", device="cpu")
    assert model.contract.input_size == 96
    x = scale_tensor(torch.from_numpy(images))
    exported = model.logits(x)
    net.eval()
    with torch.inference_mode():
        ref = net(x.contiguous()).reshape(-1).numpy()
    # fp16 weights: the error grows with the logits' scale (this tiny run over-fits to |logit|
    # ~35), so the tolerance is relative to the largest logit; a wrong export is off by far more
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(exported, ref, rtol=0, atol=0.03 * scale)
    clear = np.abs(ref) > 0.1 * scale
    assert (np.sign(exported[clear]) == np.sign(ref[clear])).all(), (exported, ref)
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"][-1]["epoch"] == 5


def test_cli_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("train", "evaluate", "calibrate", "predict"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "not a diagnosis" in " ".join(capsys.readouterr().out.split())


def test_evaluate_reports_attention_and_false_positive_grid(tmp_path: Path) -> None:
    from training.evaluate import evaluate

    metrics = evaluate(str(FIXTURES), None, tmp_path, cache_dir=None, device="cpu")
    n = metrics["n"]
    attention = metrics["attention"]
    assert attention["images"] == n > 0
    assert 0 <= attention["peak_outside"] <= n
    assert attention["box"].startswith("x in [0.10, 0.90]")
    fps = int(metrics["confusion"]["fp"])
    assert attention["false_positives"] == fps
    assert len(metrics["false_positive_grid"]) == min(fps, 24)
    assert (tmp_path / "fp_grid.png").stat().st_size > 0
