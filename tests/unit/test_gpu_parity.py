"""On CUDA the worker's model gives the CPU's scores (skips without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_imaging import load_image
from tests.conftest import SAMPLES

pytestmark = pytest.mark.gpu


def test_cuda_scores_and_heatmaps_match_cpu() -> None:
    import torch

    from cxr_model import load_model

    cpu = load_model(device="cpu")
    gpu = load_model(device="cuda")
    files = sorted((SAMPLES / "derived").glob("*.dcm"))
    batch = torch.stack([cpu.preprocess(load_image(f).pixels) for f in files])
    a = cpu.score_batch(batch)
    b = gpu.score_batch(batch)
    assert np.allclose([r.logit for r in a], [r.logit for r in b], atol=1e-2)
    for ra, rb in zip(a, b, strict=True):
        assert ra.cam is not None
        assert rb.cam is not None
        assert float(np.abs(ra.cam - rb.cam).mean()) < 0.05
