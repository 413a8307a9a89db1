"""Writing a trained network as a weights directory (fp16 weights + model.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_common.model_files import ModelFinding
from cxr_model.contract import ModelContract, sha256_file, write_contract
from cxr_model.preprocess import SCALING

WEIGHTS_FILE = "weights.pt"
#: What this training pipeline learns (labels NORMAL / PNEUMONIA), written into every
#: exported model.json; at run time the finding is read from model.json only.
PNEUMONIA = ModelFinding(
    name="pneumonia",
    display="Pneumonia",
    code_value="233604007",
    code_scheme="SCT",
    code_meaning="Pneumonia",
)


def export_model(
    net: nn.Module,
    architecture: str,
    out_dir: Path,
    *,
    name: str,
    version: str,
    val_threshold: float,
    input_size: int = 224,
    intensity: str = "none",
    extra: dict[str, Any] | None = None,
) -> ModelContract:
    """Save fp16 weights (BN statistics kept fp32) and a matching ``model.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and "running_" not in k:
            v = v.half()
        state[k] = v.contiguous()
    weights = out_dir / WEIGHTS_FILE
    torch.save(state, weights)
    contract = ModelContract(
        name=name,
        version=version,
        architecture=architecture,
        input_size=input_size,
        channels=3,
        scaling=SCALING,
        labels=("NORMAL", "PNEUMONIA"),
        output="one logit for PNEUMONIA; probability via calibration.json",
        val_threshold=float(val_threshold),
        weights_file=WEIGHTS_FILE,
        sha256=sha256_file(weights),
        finding=PNEUMONIA,
        intensity=intensity,
        extra=dict(extra or {}),
    )
    write_contract(contract, out_dir)
    return contract
