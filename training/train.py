"""The training loop: AdamW + warmup/cosine, class-weighted BCE, bf16/AMP, checkpoints."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cxr_model.preprocess import scale_tensor
from training.augment import (
    augment_batch,
    burn_in_text,
    group_balanced_weights,
    style_randomise,
)
from training.backbones import make_network
from training.data import Sample, load_resized, load_samples
from training.export import export_model
from training.metrics import roc_auc

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    train_filter: str = "split=train"
    val_filter: str = "split=val"
    select_filter: str = ""
    backbone: str = "lite0"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    augment: str = "strong"
    intensity: str = "none"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    seed: int = 20261123
    input_size: int = 224
    cache_dir: str = "cache"
    resume: bool = False
    max_steps_per_epoch: int = 0
    threads: int = 0
    device: str = ""
    version: str = ""
    init_from: str = ""
    groups: str = ""
    group_floor: int = 10
    burn_in_text: float = 0.0
    style: bool = False
    freeze_before: str = ""


def freeze_before(net: nn.Module, name: str) -> list[nn.Module]:
    """Freeze every parameter that comes before module ``name`` (e.g. ``blocks.4``) in the
    network's order; returns the frozen modules that hold BatchNorm statistics (kept in eval
    mode while training, so their statistics stay as they are)."""
    params = [n for n, _ in net.named_parameters()]
    first = next((i for i, n in enumerate(params) if n.startswith(name + ".")), None)
    if first is None:
        raise ValueError(f"no module {name!r} with parameters in the network")
    frozen_names = set(params[:first])
    for n, p in net.named_parameters():
        if n in frozen_names:
            p.requires_grad_(False)
    return [
        m
        for _, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and all(not p.requires_grad for p in m.parameters())
    ]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device) -> torch.autocast:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def predict_logits(
    net: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    intensity: str = "none",
) -> np.ndarray:
    """Logits for resized [0, 1] images (N, S, S), under the training autocast."""
    net.eval()
    out = []
    with torch.inference_mode(), _autocast(device):
        for i in range(0, len(images), batch_size):
            x = scale_tensor(torch.from_numpy(images[i : i + batch_size]), 3, intensity)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().reshape(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def threshold_at_sensitivity(y: np.ndarray, prob: np.ndarray, target: float = 0.95) -> float:
    """Largest threshold whose sample sensitivity is >= target (point estimate)."""
    pos = np.sort(np.asarray(prob)[np.asarray(y) == 1])
    if len(pos) == 0:
        return 0.5
    k = int(math.floor((1.0 - target) * len(pos) + 1e-9))  # positives we may miss
    return float(pos[k])


class _Split:
    def __init__(self, samples: list[Sample], images: np.ndarray) -> None:
        self.samples = samples
        self.images = images
        self.labels = np.array([s.label for s in samples], dtype=np.int64)


def _load_split(cfg: TrainConfig, flt: str) -> _Split | None:
    if not flt:
        return None
    try:
        samples = load_samples(cfg.data, flt)
    except ValueError:
        return None
    images = load_resized(samples, cfg.input_size, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return _Split(samples, images)


def train_groups(cfg: TrainConfig, samples: list[Sample]) -> np.ndarray:
    """Acquisition group of each training sample, from ``cxr-triage groups``' groups.json."""
    from training.groups import load_assignments

    table = load_assignments(Path(cfg.groups))
    data = Path(cfg.data)
    root = data.parent if data.is_file() else data
    out = np.empty(len(samples), dtype=np.int64)
    for i, s in enumerate(samples):
        key = s.path.relative_to(root).as_posix()
        if key not in table:
            raise ValueError(f"{key} has no group in {cfg.groups}")
        out[i] = table[key]
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluating val (and the selection set) each epoch; export the best model."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = _device(cfg)
    t0 = time.monotonic()
    tr = _load_split(cfg, cfg.train_filter)
    if tr is None:
        raise ValueError(f"no training samples for filter {cfg.train_filter!r}")
    va = _load_split(cfg, cfg.val_filter)
    sel = _load_split(cfg, cfg.select_filter)
    logger.info(
        "train %d, val %d, select %d; decode %.0fs",
        len(tr.samples),
        0 if va is None else len(va.samples),
        0 if sel is None else len(sel.samples),
        time.monotonic() - t0,
    )

    net, arch, source = make_network(cfg.backbone)
    if cfg.init_from:  # continue from a finished model (e.g. site adaptation)
        from cxr_model.scoring import load_network

        base, base_contract = load_network(Path(cfg.init_from))
        if base_contract.architecture != arch:
            raise ValueError(f"--init-from is {base_contract.architecture}, not {arch}")
        net.load_state_dict(base.state_dict())
        source = f"{source}; then initialised from {base_contract.version} ({cfg.init_from})"
    net = net.to(device).to(memory_format=torch.channels_last)
    frozen = freeze_before(net, cfg.freeze_before) if cfg.freeze_before else []
    n_pos = int(tr.labels.sum())
    n_neg = len(tr.labels) - n_pos
    pos_weight = torch.tensor([n_neg / max(n_pos, 1)], device=device)
    sample_w: torch.Tensor | None = None
    if cfg.groups:
        w = group_balanced_weights(train_groups(cfg, tr.samples), tr.labels, cfg.group_floor)
        sample_w = torch.from_numpy(w)
        pos_mass = float(w[tr.labels == 1].sum())
        # the sampler already balances the classes (within each group); reweight what is left
        pos_weight = torch.tensor([(1.0 - pos_mass) / max(pos_mass, 1e-9)], device=device)
        logger.info("group-balanced sampling: pneumonia share %.3f", pos_mass)
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = math.ceil(len(tr.labels) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup_frac * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, total - warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * prog))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = -1.0
    ckpt_path = out / "checkpoint-last.pt"
    if cfg.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        start_epoch = int(ck["epoch"]) + 1
        history = json.loads((out / "history.json").read_text())["epochs"]
        best = max((h["select_metric"] for h in history), default=-1.0)
        logger.info("resumed from epoch %d", start_epoch)

    train_wall = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        for m in frozen:
            m.eval()
        te = time.monotonic()
        if sample_w is not None:
            perm = torch.multinomial(sample_w, len(tr.labels), True, generator=gen).numpy()
        else:
            perm = torch.randperm(len(tr.labels), generator=gen).numpy()
        run_loss, seen_y, seen_s = 0.0, [], []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for step in bar:
            idx = np.sort(perm[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            xb = torch.from_numpy(tr.images[idx])
            if cfg.style:
                xb = style_randomise(xb, gen)
            if cfg.burn_in_text > 0:
                xb = burn_in_text(xb, gen, cfg.burn_in_text)
            xb = augment_batch(xb, gen, cfg.augment)
            yb = torch.from_numpy(tr.labels[idx]).float()
            target = yb * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
            if cfg.mixup > 0:
                lam = float(
                    np.random.default_rng(cfg.seed + epoch * 100000 + step).beta(
                        cfg.mixup, cfg.mixup
                    )
                )
                j = torch.randperm(len(idx), generator=gen)
                xb = lam * xb + (1 - lam) * xb[j]
                target = lam * target + (1 - lam) * target[j]
            x = (
                scale_tensor(xb, 3, cfg.intensity)
                .to(device)
                .contiguous(memory_format=torch.channels_last)
            )
            target = target.to(device)
            with _autocast(device):
                logits = net(x).float().reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            run_loss = loss.item() if step == 0 else 0.95 * run_loss + 0.05 * loss.item()
            seen_y.append(yb.numpy())
            seen_s.append(logits.detach().float().cpu().numpy())
            if step % 10 == 0 or step == steps_per_epoch - 1:
                auc = roc_auc(np.concatenate(seen_y), np.concatenate(seen_s))
                bar.set_postfix(loss=f"{run_loss:.4f}", auc=f"{auc:.4f}")
        epoch_time = time.monotonic() - te
        train_wall += epoch_time
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": run_loss,
            "train_auc": roc_auc(np.concatenate(seen_y), np.concatenate(seen_s)),
            "epoch_seconds": round(epoch_time, 1),
            "lr": sched.get_last_lr()[0],
        }
        val_logits = None
        if va is not None:
            val_logits = predict_logits(net, va.images, device, intensity=cfg.intensity)
            rec["val_auc"] = roc_auc(va.labels, val_logits)
        if sel is not None:
            rec["select_auc"] = roc_auc(
                sel.labels, predict_logits(net, sel.images, device, intensity=cfg.intensity)
            )
        rec["select_metric"] = rec.get("select_auc", rec.get("val_auc", -rec["train_loss"]))
        history.append(rec)
        logger.info("epoch %s", json.dumps(rec))
        tqdm.write(json.dumps(rec))
        val_thr = 0.5
        if val_logits is not None:
            val_thr = threshold_at_sensitivity(va.labels, 1 / (1 + np.exp(-val_logits)))
        meta = {
            "backbone": cfg.backbone,
            "pretrained": source,
            "epoch": epoch + 1,
            "config": asdict(cfg),
            "val_threshold_rule": "largest prob threshold with val sensitivity >= 0.95",
        }
        version = cfg.version or f"{cfg.backbone}-e{epoch + 1}"
        export_model(
            net,
            arch,
            out / f"model-e{epoch + 1}",
            name="cxr-pneumonia",
            version=version,
            val_threshold=val_thr,
            input_size=cfg.input_size,
            intensity=cfg.intensity,
            extra=meta,
        )
        if rec["select_metric"] >= best:
            best = rec["select_metric"]
            export_model(
                net,
                arch,
                out / "model",
                name="cxr-pneumonia",
                version=version,
                val_threshold=val_thr,
                input_size=cfg.input_size,
                intensity=cfg.intensity,
                extra=meta,
            )
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "epoch": epoch,
            },
            ckpt_path,
        )
        (out / "history.json").write_text(
            json.dumps(
                {
                    "config": asdict(cfg),
                    "epochs": history,
                    "n_train": len(tr.labels),
                    "pretrained": source,
                    "architecture": arch,
                },
                indent=2,
            )
        )
        net.to(memory_format=torch.channels_last)
    summary: dict[str, Any] = {
        "history": history,
        "train_seconds": round(train_wall, 1),
        "out": str(out),
    }
    if va is not None:
        summary["val_logits"] = predict_logits(
            net, va.images, device, intensity=cfg.intensity
        ).tolist()
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
