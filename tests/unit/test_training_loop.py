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


@pytest.mark.slow
def test_fine_tune_at_a_higher_input_size_and_compare_at_each_models_size(
    tmp_path: Path,
) -> None:
    """``--init-from`` + ``--input-size``: a 224 px model fine-tuned at 256 px exports a 256 px
    contract, and ``training.compare`` feeds every model of a candidate at its own size."""
    from cxr_model import WEIGHTS_DIR
    from training.compare import candidate_logits, load_candidate
    from training.evaluate import model_logits

    run = tmp_path / "run"
    args = ["train", "--data", str(FIXTURES), "--train-filter", "split=train"]
    args += ["--val-filter", "split=train", "--init-from", str(WEIGHTS_DIR)]
    args += ["--input-size", "256", "--epochs", "1", "--batch-size", "4", "--lr", "1e-5"]
    args += ["--augment", "none", "--max-steps-per-epoch", "1", "--threads", "2"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(run)]
    assert main(args) == 0
    tuned = load_model(run / "model", device="cpu")
    assert tuned.contract.input_size == 256
    assert tuned.contract.sha256 != load_model(WEIGHTS_DIR, device="cpu").contract.sha256

    samples = load_samples(FIXTURES, "split=train")
    sized = {n: load_resized(samples, n, None) for n in (224, 256)}
    at_own_size = model_logits(tuned, sized[256])
    got = candidate_logits(load_candidate(str(run / "model")), sized.__getitem__, tta=False)
    np.testing.assert_array_equal(got, at_own_size)
    assert not np.allclose(model_logits(tuned, sized[224]), at_own_size, atol=1e-3)
    shipped = model_logits(load_model(WEIGHTS_DIR, device="cpu"), sized[224])
    pair = candidate_logits(
        load_candidate(f"{WEIGHTS_DIR}+{run / 'model'}"), sized.__getitem__, tta=False
    )
    np.testing.assert_allclose(pair, (shipped + at_own_size) / 2, rtol=0, atol=1e-5)
