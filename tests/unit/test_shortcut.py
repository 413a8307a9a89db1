"""Issue 11: acquisition groups, group-balanced sampling, style randomisation, burned-in text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import (
    burn_in_text,
    group_balanced_weights,
    match_histograms,
    style_randomise,
    synthetic_text,
    text_mask,
)
from training.groups import assign, fit_centroids, group_table, markdown_table


def test_group_balanced_weights_give_each_group_both_classes_equally() -> None:
    # group 0: 2 normal + 98 pneumonia (the shortcut cluster); group 1: 50 + 50; group 2: only 0s
    groups = np.array([0] * 100 + [1] * 100 + [2] * 20)
    labels = np.array([0] * 2 + [1] * 98 + [0] * 50 + [1] * 50 + [0] * 20)
    w = group_balanced_weights(groups, labels, floor=1)
    assert abs(w.sum() - 1.0) < 1e-9
    for g in (0, 1):
        m = groups == g
        normal, pneu = w[m & (labels == 0)].sum(), w[m & (labels == 1)].sum()
        assert abs(normal - pneu) < 1e-12
    # group masses stay proportional to group sizes
    assert abs(w[groups == 0].sum() / w[groups == 2].sum() - 5.0) < 1e-9
    # the floor caps how often one rare image is drawn
    capped = group_balanced_weights(groups, labels, floor=10)
    assert capped[0] < w[0]


def test_burn_in_text_is_deterministic_and_marks_the_image() -> None:
    x = torch.full((4, 64, 64), 0.3)
    a = burn_in_text(x, torch.Generator().manual_seed(5), p=1.0)
    b = burn_in_text(x, torch.Generator().manual_seed(5), p=1.0)
    assert torch.equal(a, b)
    assert torch.equal(x, torch.full((4, 64, 64), 0.3)), "input must not be modified"
    changed = (a - x).abs().amax(dim=(1, 2))
    assert bool((changed > 0.3).all()), changed
    assert torch.equal(burn_in_text(x, torch.Generator().manual_seed(5), p=0.0), x)


def test_synthetic_text_and_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    texts = {synthetic_text(gen) for _ in range(60)}
    assert {"R", "L"} & texts
    assert any(":" in t for t in texts), texts  # timestamps
    m = text_mask("R", 30)
    assert m.max() > 0.9
    assert m.shape[0] >= 15


def test_histogram_matching_takes_the_reference_distribution() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 16, 16, generator=gen) ** 3
    ref = torch.rand(2, 16, 16, generator=gen) ** 0.3
    out = match_histograms(x, ref)
    assert torch.equal(out.flatten(1).sort(1).values, ref.flatten(1).sort(1).values)
    # order preserved: the brightest pixel stays the brightest
    assert torch.equal(out.flatten(1).argmax(1), x.flatten(1).argmax(1))


def test_style_randomise_keeps_range_and_is_deterministic() -> None:
    x = torch.rand(8, 48, 48, generator=torch.Generator().manual_seed(2))
    a = style_randomise(x, torch.Generator().manual_seed(3))
    b = style_randomise(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert float(a.min()) >= 0.0
    assert float(a.max()) <= 1.0
    assert not torch.equal(a, x)


def test_kmeans_groups_are_stable_and_tabulated() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    feats = np.concatenate([c + 0.01 * rng.standard_normal((30, 8)) for c in centres])
    cents = fit_centroids(feats.astype(np.float32), k=3, seed=1)
    again = fit_centroids(feats.astype(np.float32), k=3, seed=1)
    np.testing.assert_array_equal(cents, again)
    g = assign(feats, cents)
    assert sorted(np.bincount(g).tolist()) == [30, 30, 30]
    labels = np.array([0] * 3 + [1] * 27 + [0] * 30 + [1] * 20 + [0] * 10)
    splits = ["train"] * 80 + ["test"] * 10
    flagged = np.zeros(90, dtype=bool)
    flagged[80:] = True
    rows = group_table(g, labels, splits, 3, flagged, np.full(90, 0.9))
    assert sum(r.train_normal + r.train_pneumonia for r in rows) == 80
    assert sum(r.test_fp for r in rows) == 10  # the last ten are test normals, all flagged
    md = markdown_table(rows)
    assert md.count("\n") == 5
    assert "(worst)" in md


def test_heatmap_peak_outside_the_thorax_box() -> None:
    from training.attention import cam_peak, peak_outside_thorax, summarise

    centre = np.zeros((7, 7), dtype=np.float32)
    centre[3, 3] = 1.0
    corner = np.zeros((7, 7), dtype=np.float32)
    corner[0, 6] = 1.0  # top right: where the timestamp sits
    assert cam_peak(corner) == (6.5 / 7, 0.5 / 7)
    assert not peak_outside_thorax(centre)
    assert peak_outside_thorax(corner)
    s = summarise([centre, corner, corner], np.array([1, 0, 0]), np.array([True, True, False]))
    assert (s.n, s.outside, s.n_fp, s.outside_fp, s.n_flagged, s.outside_flagged) == (
        3,
        2,
        1,
        1,
        2,
        1,
    )
    assert s.to_json()["share_outside"] == 2 / 3


def test_freeze_before_leaves_only_the_late_layers_trainable() -> None:
    from cxr_model.architecture import build_network
    from training.train import freeze_before

    net = build_network("tf_efficientnet_lite0")
    frozen = freeze_before(net, "blocks.4")
    trainable = {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
        for n, p in net.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"blocks.4", "blocks.5", "blocks.6", "conv_head", "bn2", "classifier"}
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen)
    assert not any(p.requires_grad for m in frozen for p in m.parameters())


def test_groups_command_is_offered(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["groups", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "split=train" in out
    assert "not a diagnosis" in out
