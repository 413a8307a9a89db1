"""Fast CAM (forward pass only) against pytorch-grad-cam, the reference implementation.

For a head of global average pooling + one linear layer, Grad-CAM's channel weights are the
head's weights divided by h*w, so the maps must agree on real radiographs; any other head
must go to Grad-CAM itself."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from cxr_imaging import check_eligibility, load_image
from cxr_model import load_model
from cxr_model.heatmaps import (
    class_activation_maps,
    fast_cam,
    gap_linear_head,
    grad_cam,
    gradcam_target_layer,
)
from cxr_triage.demo import sample_files


@pytest.fixture(scope="module")
def real_batch() -> torch.Tensor:
    """The committed eligible samples, decoded and preprocessed by the project's code."""
    model = load_model(device="cpu")
    tensors = []
    for path in sample_files():
        if check_eligibility(pydicom.dcmread(path, stop_before_pixels=True)).eligible:
            tensors.append(model.preprocess(load_image(path).pixels))
    assert len(tensors) >= 8
    return torch.stack(tensors)


def test_fast_cam_matches_grad_cam_on_the_committed_samples(real_batch: torch.Tensor) -> None:
    model = load_model(device="cpu")
    arch = model.contract.architecture
    layer = gradcam_target_layer(model.net, arch)
    linear = gap_linear_head(model.net, layer, real_batch[:1])
    assert linear is not None
    ref_logits, ref_maps = grad_cam(model.net, arch, real_batch)
    fast = fast_cam(model.net, layer, linear, real_batch)
    assert fast is not None
    logits, maps = fast
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert maps.shape == ref_maps.shape == (len(real_batch), 224, 224)
    assert maps.dtype == np.float32
    assert float(maps.min()) >= 0.0
    assert float(maps.max()) <= 1.0
    for fast_map, ref_map in zip(maps, ref_maps, strict=True):
        assert float(np.abs(fast_map - ref_map).max()) <= 0.05
        if ref_map.std() > 0:
            assert np.corrcoef(fast_map.ravel(), ref_map.ravel())[0, 1] >= 0.99
        else:  # an all-zero map (no positive evidence) must stay all zero
            assert float(fast_map.max()) == 0.0
    # The model's own scoring uses the fast path and gives the same results.
    scored = model.score_batch(real_batch)
    for r, lg, m in zip(scored, logits, maps, strict=True):
        assert r.logit == pytest.approx(float(lg), abs=1e-5)
        assert r.cam is not None
        np.testing.assert_allclose(r.cam, m, atol=1e-6)


def _resnet(head: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=1)
    if head is not None:
        net.fc = head
    return net.eval()


def test_a_resnet_gap_linear_head_is_found_and_matches_grad_cam() -> None:
    net = _resnet()
    x = torch.rand(3, 3, 64, 64)
    layer = gradcam_target_layer(net, "resnet18")
    assert gap_linear_head(net, layer, x[:1]) is net.fc
    ref_logits, ref_maps = grad_cam(net, "resnet18", x)
    logits, maps = class_activation_maps(net, "resnet18", x)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert float(np.abs(maps - ref_maps).max()) <= 0.05


def test_a_head_that_is_not_gap_linear_uses_grad_cam() -> None:
    net = _resnet(nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Linear(8, 1)))
    x = torch.rand(2, 3, 64, 64)
    assert gap_linear_head(net, gradcam_target_layer(net, "resnet18"), x[:1]) is None
    ref_logits, ref_maps = grad_cam(net, "resnet18", x)
    logits, maps = class_activation_maps(net, "resnet18", x)
    np.testing.assert_array_equal(logits, ref_logits)
    np.testing.assert_array_equal(maps, ref_maps)


class _Tiny(nn.Module):
    """conv -> pool -> [flatten] -> linear, with a switch for a hidden functional op."""

    def __init__(self, pool: nn.Module, hidden_op: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = pool
        self.fc = nn.Linear(4, 1)
        self.hidden_op = hidden_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.flatten(self.pool(self.features(x)), 1)
        if self.hidden_op:
            z = z * 2.0  # a functional op no module hook sees
        return self.fc(z)


@pytest.mark.parametrize(
    ("pool", "hidden_op", "found"),
    [
        (nn.AdaptiveAvgPool2d(1), False, True),
        (nn.AdaptiveMaxPool2d(1), False, False),
        (nn.AdaptiveAvgPool2d(2), False, False),
        (nn.AdaptiveAvgPool2d(1), True, False),
    ],
)
def test_the_head_is_recognised_by_structure_and_numbers_not_by_name(
    pool: nn.Module, hidden_op: bool, found: bool
) -> None:
    torch.manual_seed(0)
    net = _Tiny(pool, hidden_op).eval()
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == 2:
        net.fc = nn.Linear(16, 1)
    head = gap_linear_head(net, net.features, torch.rand(1, 3, 8, 8))
    assert (head is net.fc) if found else (head is None)
