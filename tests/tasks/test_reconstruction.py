"""Pixel-space reconstructions, masked PSNR and the panel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from croco.models import CroCoNet
from croco.models.criterion import normalize_patches
from croco.tasks.reconstruction import (
    NORM_PIX_NOTE,
    OTHER_RECONSTRUCTION,
    PANEL_COLUMNS,
    fixed_mask,
    masked_psnr,
    patches_to_rgb,
    reconstruction_views,
    render_panel,
    unnormalize_prediction,
)

TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2, "dec_embed_dim": 32,
            "dec_depth": 1, "dec_num_heads": 2, "pos_embed": "RoPE100"}  # fmt: skip


def test_unnormalize_inverts_the_loss_normalisation():
    target = torch.randn(2, 5, 48) * 3 + 1
    assert torch.allclose(unnormalize_prediction(normalize_patches(target), target), target, atol=1e-5)


def test_patches_to_rgb_undoes_imagenet_normalisation_channel_fastest():
    rgb = torch.rand(1, 4, 2 * 2 * 3)
    mean = torch.tensor([0.485, 0.456, 0.406]).repeat(4)
    std = torch.tensor([0.229, 0.224, 0.225]).repeat(4)
    assert torch.allclose(patches_to_rgb((rgb - mean) / std), rgb, atol=1e-6)


def test_masked_psnr_only_counts_masked_patches():
    target = torch.full((2, 4, 12), 0.5)
    pred = target.clone()
    pred[:, 0] += 0.1  # error on patch 0 only
    mask = torch.tensor([[True, False, False, False], [False, True, True, False]])
    psnr = masked_psnr(pred, target, mask)
    assert psnr[0].item() == pytest.approx(-10 * math.log10(0.01), rel=1e-4)  # 20 dB
    assert psnr[1].item() == pytest.approx(100.0)  # perfect (mse clamped at 1e-10)


def test_fixed_mask_is_reproducible_with_the_official_count():
    a = fixed_mask(3, 196, 0.9, seed=7)
    assert a.dtype == torch.bool and a.shape == (3, 196)
    assert (a.sum(1) == 176).all()  # int(0.9 * 196)
    assert torch.equal(a, fixed_mask(3, 196, 0.9, seed=7))
    assert not torch.equal(a, fixed_mask(3, 196, 0.9, seed=8))


def test_reconstruction_views_and_panel():
    torch.manual_seed(0)
    net = CroCoNet(**TINY, mask_ratio=0.75).eval()
    img1, img2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    mask = fixed_mask(2, 16, 0.75, seed=0)
    views = reconstruction_views(net, img1, img2, mask)
    assert set(views) == set(PANEL_COLUMNS)
    for v in views.values():
        assert v.shape == (2, 3, 32, 32) and v.min() >= 0 and v.max() <= 1
    # visible patches of the reconstruction are the input; masked ones are black in the masked view
    rec = net.patchify(views["reconstruction"])
    tgt = net.patchify(views["target"])
    masked = net.patchify(views["masked"])
    assert torch.allclose(rec[~mask], tgt[~mask])
    assert (masked[mask] == 0).all() and torch.allclose(masked[~mask], tgt[~mask])
    panel = render_panel(views)
    # 32 px images upscaled x3 to >= 96, 4 columns, 2 rows + title row
    assert panel.size == (4 * 96 + 5 * 2, 14 + 2 * (96 + 2) + 2)


def test_reconstruction_from_another_view_2_and_a_titled_panel():
    torch.manual_seed(0)
    net = CroCoNet(**TINY, mask_ratio=0.75).eval()
    img1, img2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    mask = fixed_mask(2, 16, 0.75, seed=0)
    same = reconstruction_views(net, img1, img2, mask, other_img2=img2)
    assert set(same) == {*PANEL_COLUMNS, OTHER_RECONSTRUCTION}
    assert torch.equal(same[OTHER_RECONSTRUCTION], same["reconstruction"])
    other = reconstruction_views(net, img1, img2, mask, other_img2=img2.flip(0))
    rec, alt = net.patchify(other["reconstruction"]), net.patchify(other[OTHER_RECONSTRUCTION])
    assert torch.equal(rec[~mask], alt[~mask]) and not torch.allclose(rec[mask], alt[mask])  # visible: pasted
    columns = ("reference", "masked", "reconstruction", OTHER_RECONSTRUCTION, "target")
    plain = render_panel(other, columns)
    titled = render_panel(other, columns, labels={OTHER_RECONSTRUCTION: "rec., another scene's view 2"},
                          title=NORM_PIX_NOTE)  # fmt: skip
    assert titled.width == plain.width == 5 * 96 + 6 * 2
    # the title wraps over several lines, the long column name over two
    assert titled.height >= plain.height + 2 * 14 + 14


def test_long_captions_wrap_onto_more_lines_inside_the_row():
    black = {"a": torch.zeros(1, 3, 32, 32), "b": torch.zeros(1, 3, 32, 32)}
    caption = "rotation 107.6 deg, error 65.6 deg; direction error 21.3 deg"
    panel = np.asarray(render_panel(black, ("a", "b"), captions=[caption]))
    yellow = (panel[..., 0] > 200) & (panel[..., 1] > 200) & (panel[..., 2] < 50)
    rows = np.flatnonzero(yellow.any(axis=1))
    first_row_top = 14 + 2  # header, then the row
    assert rows.min() >= first_row_top and rows.max() > first_row_top + 14  # a second line of text
    assert rows.max() < first_row_top + 96  # inside the row's images
