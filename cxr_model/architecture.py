"""Network definitions. Every architecture outputs one logit (PNEUMONIA vs NORMAL)."""

from __future__ import annotations

from torch import nn

from cxr_model.errors import ContractError

ARCHITECTURES = ("tf_efficientnet_lite0", "resnet18")


def build_network(architecture: str) -> nn.Module:
    """Build an untrained network with a single-logit head."""
    if architecture == "tf_efficientnet_lite0":
        import timm

        net: nn.Module = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1)
        return net
    if architecture == "resnet18":
        from torchvision.models import resnet18

        res: nn.Module = resnet18(weights=None, num_classes=1)
        return res
    raise ContractError(f"unsupported architecture {architecture!r}; known: {ARCHITECTURES}")
