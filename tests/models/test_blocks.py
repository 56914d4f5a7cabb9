"""Attention paths, RoPE and sin-cos layout."""

from __future__ import annotations

import math

import pytest
import torch

from croco.models.blocks import Attention, CrossAttention, PatchEmbed
from croco.models.pos_embed import RoPE2D, resample_pos_embed, rope_base_from_name, sincos_pos_embed_2d


def _grid_pos(h: int, w: int, batch: int = 2) -> torch.Tensor:
    return PatchEmbed((h * 4, w * 4), 4, 3, 8).positions(batch, (h, w), torch.device("cpu"))


@pytest.mark.parametrize("rope", [None, RoPE2D(100.0)], ids=["no-rope", "rope"])
def test_fused_and_manual_self_attention_agree(rope):
    attn = Attention(64, 4, rope=rope)
    x, pos = torch.randn(2, 12, 64), _grid_pos(3, 4)
    attn.fused_attn = True
    fused = attn(x, pos)
    attn.fused_attn = False
    torch.testing.assert_close(fused, attn(x, pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [None, RoPE2D(100.0)], ids=["no-rope", "rope"])
def test_fused_and_manual_cross_attention_agree(rope):
    attn = CrossAttention(64, 4, rope=rope)
    q, mem = torch.randn(2, 12, 64), torch.randn(2, 20, 64)
    qpos, kpos = _grid_pos(3, 4), _grid_pos(4, 5)
    attn.fused_attn = True
    fused = attn(q, mem, qpos, kpos)
    attn.fused_attn = False
    torch.testing.assert_close(fused, attn(q, mem, qpos, kpos), atol=1e-5, rtol=1e-5)


def test_rope_dot_product_depends_only_on_relative_position():
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(qp, kp):
        rq = rope(q, torch.tensor([[qp]]))
        rk = rope(k, torch.tensor([[kp]]))
        return (rq * rk).sum().item()

    base = score((2, 3), (5, 1))
    assert score((7, 9), (10, 7)) == pytest.approx(base, abs=1e-4)  # same (dy, dx) offset
    assert score((0, 0), (3, 0)) != pytest.approx(base, abs=1e-3)  # another offset, another score
    # a rotation keeps norms
    rq = rope(q, torch.tensor([[(4, 11)]]))
    assert rq.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rope_channel_layout_matches_official_formula():
    """First half of the head rotated with y, second with x; channel j pairs with j + m/2 (rotate-half)."""
    dh, base = 16, 100.0
    x = torch.randn(1, 1, 1, dh)
    y_pos, x_pos = 3, 5
    out = RoPE2D(base)(x, torch.tensor([[(y_pos, x_pos)]]))[0, 0, 0]
    m = dh // 2
    expected = torch.empty(dh)
    for half, p in ((0, y_pos), (1, x_pos)):
        v = x[0, 0, 0, half * m : (half + 1) * m]
        for j in range(m // 2):
            theta = p * (1.0 / base ** (2 * j / m))
            a, b = v[j], v[j + m // 2]
            expected[half * m + j] = a * math.cos(theta) - b * math.sin(theta)
            expected[half * m + j + m // 2] = b * math.cos(theta) + a * math.sin(theta)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_rope_low_precision_close_to_fp32(dtype, tol):
    rope = RoPE2D(100.0)
    x, pos = torch.randn(2, 4, 12, 32), _grid_pos(3, 4)
    ref = rope(x, pos)
    low = rope(x.to(dtype), pos)
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), ref, atol=tol * 4, rtol=tol)


def test_rope_base_parsing():
    assert rope_base_from_name("RoPE100") == 100.0
    for bad in ("rope100", "RoPE", "RoPEx", "learned"):
        with pytest.raises(ValueError, match="expected 'cosine' or 'RoPE<base>'"):
            rope_base_from_name(bad)


def test_sincos_layout_x_first_sin_before_cos():
    dim, (h, w) = 16, (3, 5)
    emb = sincos_pos_embed_2d(dim, (h, w))
    assert emb.shape == (h * w, dim) and emb.dtype == torch.float32
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    for token in (0, 7, 14):
        r, c = divmod(token, w)  # row-major tokens
        expected = torch.cat([(c * omega).sin(), (c * omega).cos(), (r * omega).sin(), (r * omega).cos()]).float()
        torch.testing.assert_close(emb[token], expected)


def test_resample_pos_embed_bicubic_and_identity():
    emb = sincos_pos_embed_2d(32, (4, 4))
    assert resample_pos_embed(emb, (4, 4)) is emb
    out = resample_pos_embed(emb, (6, 8))
    assert out.shape == (48, 32)
    # corners of the resampled grid stay close to the source corners (positions keep the 0..s-1 range)
    assert (out[0] - emb[0]).abs().max() < 0.35
    with pytest.raises(ValueError, match="must be square"):
        resample_pos_embed(torch.zeros(12, 32), (4, 4))


def test_patch_embed_any_divisible_size_and_positions():
    pe = PatchEmbed(32, 8, 3, 16)
    tokens, pos = pe(torch.randn(2, 3, 24, 40))
    assert tokens.shape == (2, 15, 16) and pos.shape == (2, 15, 2)
    assert pos[0, 6].tolist() == [1, 1] and pos[0, 4].tolist() == [0, 4]  # (row, col), row-major
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        pe(torch.randn(1, 3, 30, 32))
