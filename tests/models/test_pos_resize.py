"""Cosine positions at a size other than the construction one (``CroCoNet.pos_resize``).

The official code adapts a cosine checkpoint to another size by resampling its stored buffers bicubically
(naver/croco ``models/pos_embed.py: interpolate_pos_embed``); running a model at another size must do the same by
default, with the analytic sin-cos grid only on request.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from croco.models import CroCoNet
from croco.models.pos_embed import interpolate_pos_embed, resample_pos_embed, sincos_pos_embed_2d

BUILT, OTHER = (14, 14), (22, 44)  # a 224 model run at 352x704 (the CroCo-Stereo crop), 16-pixel patches
BUFFERS = ("enc_pos_embed", "dec_pos_embed")


def _kwargs(img_size: int | tuple[int, int] = 224) -> dict:
    return {"img_size": img_size, "patch_size": 16, "enc_embed_dim": 64, "enc_depth": 1, "enc_num_heads": 2,
            "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2, "pos_embed": "cosine"}  # fmt: skip


def _bicubic(buffer: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """The official resampling written out: (N, D) -> (1, D, h0, w0) -> bicubic -> (h*w, D)."""
    x = buffer.reshape(1, *src, buffer.shape[1]).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=dst, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], buffer.shape[1])


def _perturbed_state(model: CroCoNet) -> dict[str, torch.Tensor]:
    """The model's weights with cosine buffers that no longer match the analytic grid (as a checkpoint may)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in BUFFERS:
        state[name] = state[name] * 1.5 + 0.1 * torch.randn_like(state[name])
    return state


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_default_resamples_the_stored_buffers_bicubically():
    model = CroCoNet(**_kwargs())
    assert model.pos_resize == "bicubic"
    for name in BUFFERS:
        buffer = getattr(model, name)
        got = model.cosine_pos_embed(name, OTHER)
        torch.testing.assert_close(got, _bicubic(buffer, BUILT, OTHER), atol=1e-6, rtol=0)
        assert _rel(got, sincos_pos_embed_2d(buffer.shape[1], OTHER)) > 0.5  # ~71% away from the analytic grid


def test_running_at_another_size_equals_the_official_checkpoint_resize():
    """A 224 model run at 352x704 == the same weights loaded into a 352x704 model through
    ``interpolate_pos_embed``, for the feature methods and forward() alike (encoder and decoder buffers)."""
    small = CroCoNet(**_kwargs()).eval()
    small.load_state_dict(_perturbed_state(small))
    large = CroCoNet(**_kwargs((352, 704))).eval()
    large.load_state_dict(interpolate_pos_embed(large, dict(small.state_dict())))
    img1, img2 = torch.randn(1, 3, 352, 704), torch.randn(1, 3, 352, 704)
    mask = small.mask_generator(1, OTHER[0] * OTHER[1])
    with torch.no_grad():
        torch.testing.assert_close(small.encoder_features(img1, False), large.encoder_features(img1, False))
        torch.testing.assert_close(small.binocular_features(img1, img2, False),
                                   large.binocular_features(img1, img2, False))  # fmt: skip
        torch.testing.assert_close(small(img1, img2, mask=mask)[0], large(img1, img2, mask=mask)[0])


def test_analytic_option_recomputes_the_sincos_grid():
    model = CroCoNet(**_kwargs())
    model.load_state_dict(_perturbed_state(model))  # the analytic grid ignores the stored values
    model.pos_resize = "analytic"
    for name in BUFFERS:
        dim = getattr(model, name).shape[1]
        assert torch.equal(model.cosine_pos_embed(name, OTHER), sincos_pos_embed_2d(dim, OTHER))
    img = torch.randn(1, 3, 352, 704)
    with torch.no_grad():  # and the encoder (one block) uses it
        x, pos = model.patch_embed(img)
        expected = model.enc_norm(model.enc_blocks[0](x + sincos_pos_embed_2d(64, OTHER), pos))
        torch.testing.assert_close(model.encoder_features(img, False), expected)
    with pytest.raises(ValueError, match="pos_resize='nearest': expected one of bicubic, analytic"):
        model.pos_resize = "nearest"


@pytest.mark.parametrize("mode", ["bicubic", "analytic"])
def test_built_size_gives_the_buffer_itself(mode: str):
    model = CroCoNet(**_kwargs())
    model.load_state_dict(_perturbed_state(model))
    model.pos_resize = mode
    for name in BUFFERS:
        assert model.cosine_pos_embed(name, BUILT) is getattr(model, name)


def test_new_buffers_take_effect_at_another_size():
    """The per-grid cache must not outlive the buffer it was computed from."""
    model = CroCoNet(**_kwargs()).eval()
    img = torch.randn(1, 3, 352, 704)
    with torch.no_grad():
        before = model.encoder_features(img, False)  # fills the cache at 22x44
        assert model.cosine_pos_embed("enc_pos_embed", OTHER) is model.cosine_pos_embed("enc_pos_embed", OTHER)
        state = _perturbed_state(model)
        model.load_state_dict(state)  # copies in place: same tensor, new version
        for name in BUFFERS:
            expected = _bicubic(state[name], BUILT, OTHER)
            torch.testing.assert_close(model.cosine_pos_embed(name, OTHER), expected, atol=1e-6, rtol=0)
        assert not torch.allclose(model.encoder_features(img, False), before)
        model.enc_pos_embed.mul_(2)  # any in-place change
        expected = _bicubic(model.enc_pos_embed, BUILT, OTHER)
        torch.testing.assert_close(model.cosine_pos_embed("enc_pos_embed", OTHER), expected, atol=1e-6, rtol=0)
        model.pos_resize = "analytic"  # the mode is part of the key
        assert torch.equal(model.cosine_pos_embed("enc_pos_embed", OTHER), sincos_pos_embed_2d(64, OTHER))
        model.pos_resize = "bicubic"
        model.double()  # a new buffer: dtype (and device) follow it
        assert model.cosine_pos_embed("enc_pos_embed", OTHER).dtype == torch.float64


def test_inference_mode_at_another_size():
    """Inference tensors have no version counter: a model built under inference mode must still run, and an
    embedding cached during an inference-mode loop must not break training afterwards."""
    img1, img2 = torch.randn(1, 3, 96, 160), torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        built_there = CroCoNet(**_kwargs())
        assert built_there.enc_pos_embed.is_inference()
        feats = built_there.encoder_features(img1, False)
    with torch.no_grad():  # outside inference mode too (its weights cannot enter an autograd graph)
        torch.testing.assert_close(built_there.encoder_features(img1, False), feats)
    model = CroCoNet(**_kwargs())
    with torch.inference_mode():  # e.g. a validation loop, which fills the cache
        model.encoder_features(img1)
    pred, _, target = model(img1, img2)
    ((pred - target) ** 2).mean().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_resample_pos_embed_non_square_source():
    emb = sincos_pos_embed_2d(16, (3, 5))
    assert resample_pos_embed(emb, (3, 5), src_grid=(3, 5)) is emb
    torch.testing.assert_close(resample_pos_embed(emb, (6, 4), src_grid=(3, 5)), _bicubic(emb, (3, 5), (6, 4)))
    with pytest.raises(ValueError, match="does not fit the source grid"):
        resample_pos_embed(emb, (4, 4), src_grid=(4, 4))
