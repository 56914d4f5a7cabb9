"""The speed options of the network, each against the plain path: attention backends (and ``auto``), the
vectorised RoPE, bf16 autocast, the channels-last patch embedding, fused AdamW, and their config switches."""

from __future__ import annotations

import pytest
import torch

from croco.models import CroCoNet, MaskedMSE
from croco.models.blocks import (
    ATTN_BACKENDS,
    AUTO_ATTN_BACKEND,
    Attention,
    CrossAttention,
    resolve_attn_backend,
)
from croco.models.pos_embed import RoPE2D
from croco.tasks.optim import OptimRecipe, build_optimizer, fused_adamw_supported
from croco.utils.config import CONF_DIR, group_options, model_preset


def _backend_output(fn, module: torch.nn.Module, backend: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    module.attn_backend = backend
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out.square().sum().backward()
    return (out.detach(), *(x.grad for x in leaves))


@pytest.mark.parametrize("backend", [b for b in ATTN_BACKENDS if b != "manual"])
def test_every_attention_backend_matches_the_explicit_softmax(backend):
    """Self- and cross-attention with RoPE: outputs and input gradients of ``backend`` against ``manual``."""
    rope = RoPE2D(100.0)
    x, y = torch.randn(2, 20, 64), torch.randn(2, 30, 64)
    attn, cross = Attention(64, 4, rope), CrossAttention(64, 4, rope)
    pos = {"xpos": torch.randint(0, 8, (2, 20, 2)), "ypos": torch.randint(0, 8, (2, 30, 2))}

    def run(name: str) -> tuple[torch.Tensor, ...]:
        return (_backend_output(lambda a: attn(a, pos["xpos"]), attn, name, x)
                + _backend_output(lambda a, b: cross(a, b, pos["xpos"], pos["ypos"]), cross, name, x, y))  # fmt: skip

    reference = run("manual")
    try:
        got = run(backend)
    except RuntimeError as error:  # e.g. the memory-efficient kernel has no CPU implementation
        pytest.skip(f"{backend} is not available on this device: {str(error).splitlines()[0]}")
    for a, b in zip(reference, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_auto_uses_the_measured_table_and_sdpa_elsewhere():
    for (device_type, dtype), backend in AUTO_ATTN_BACKEND.items():
        assert backend in ATTN_BACKENDS and backend != "auto"
        assert resolve_attn_backend("auto", torch.device(device_type), dtype) == backend
    assert resolve_attn_backend("auto", torch.device("meta"), torch.float32) == "sdpa"
    assert resolve_attn_backend("sdpa_math", torch.device("cpu"), torch.float32) == "sdpa_math"


def _rope_per_axis(rope: RoPE2D, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The earlier per-axis implementation (the official layout), kept here as the reference."""

    def rotate_1d(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        inv_freq = rope.f0 / rope.base ** (torch.arange(0, dim, 2).float() / dim)
        angles = pos.float()[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        half = dim // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    y, x = tokens.chunk(2, dim=-1)
    return torch.cat([rotate_1d(y, positions[..., 0]), rotate_1d(x, positions[..., 1])], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vectorised_rope_is_bit_identical_to_the_per_axis_rotation(dtype):
    rope = RoPE2D(100.0)
    tokens = torch.randn(2, 3, 40, 32).to(dtype)
    positions = torch.randint(0, 14, (2, 40, 2))
    assert torch.equal(rope(tokens, positions), _rope_per_axis(rope, tokens, positions))
    explained = torch._dynamo.explain(rope)(tokens, positions)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_bf16_autocast_step_tracks_fp32(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs, mask_ratio=0.75)
    img1, img2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    mask = model.mask_generator(2, 64, generator=torch.Generator().manual_seed(0))
    fp32 = MaskedMSE()(*model(img1, img2, mask))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, _, target = model(img1, img2, mask)
        assert pred.dtype == torch.bfloat16
        bf16 = MaskedMSE()(pred.float(), mask, target)
    bf16.backward()
    torch.testing.assert_close(bf16, fp32, rtol=3e-2, atol=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_patch_embedding_matches_and_needs_no_copy(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs)
    img = torch.randn(2, 3, 64, 64)
    plain, _ = model.patch_embed(img)
    model.channels_last = True
    fast, _ = model.patch_embed(img)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert fast.is_contiguous() and not plain.is_contiguous()  # (B, N, D) straight from the NHWC output
    with pytest.raises(TypeError, match="channels_last='yes': expected true or false"):
        model.channels_last = "yes"


def test_config_switches_reach_every_block_and_stay_out_of_exports(tiny_kwargs):
    for name in group_options(CONF_DIR, "model"):
        preset = model_preset(name)
        assert preset["attn_backend"] == "auto" and preset["channels_last"] is False, name
    model = CroCoNet(**{**tiny_kwargs, "attn_backend": "sdpa_math", "channels_last": True})
    assert model.attn_backend == "sdpa_math" and model.channels_last
    assert {m.attn_backend for m in model.modules() if isinstance(m, Attention | CrossAttention)} == {"sdpa_math"}
    assert "attn_backend" not in model.croco_kwargs and "channels_last" not in model.croco_kwargs
    model.dec_blocks[0].attn.fused_attn = False  # the boolean view of one module
    assert model.dec_blocks[0].attn.attn_backend == "manual" and model.attn_backend == "mixed"
    with pytest.raises(ValueError, match="attn_backend='flash': expected one of auto, manual, sdpa"):
        CroCoNet(**{**tiny_kwargs, "attn_backend": "flash"})


def test_fused_adamw_where_supported_gives_the_plain_update(tiny_kwargs):
    torch.manual_seed(0)
    plain_model = CroCoNet(**tiny_kwargs)
    fused_model = CroCoNet(**tiny_kwargs)
    fused_model.load_state_dict(plain_model.state_dict())
    supported = fused_adamw_supported("cpu")
    plain = build_optimizer(plain_model, OptimRecipe(fused=False), lr=1e-3)
    auto = build_optimizer(fused_model, OptimRecipe(), lr=1e-3)
    assert bool(auto.defaults["fused"]) == supported and not plain.defaults["fused"]
    img1, img2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    mask = plain_model.mask_generator(2, 64, generator=torch.Generator().manual_seed(0))
    for model, opt in ((plain_model, plain), (fused_model, auto)):
        MaskedMSE()(*model(img1, img2, mask)).backward()
        opt.step()
    for (name, a), b in zip(plain_model.named_parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="optim.fused='yes': expected null"):
        OptimRecipe(fused="yes")
