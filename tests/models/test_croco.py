"""CroCoNet behaviour: masking, shapes, non-square inputs, decoders, precision, feature APIs, init."""

from __future__ import annotations

import pytest
import torch

from croco.models import CroCoNet, MaskedMSE


def _imgs(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 3, h, w), torch.randn(b, 3, h, w)


@pytest.mark.parametrize("ratio, n, expected", [(0.9, 196, 176), (0.75, 64, 48), (0.5, 15, 7)])
def test_mask_count_is_int_ratio_times_n(ratio, n, expected):
    model = CroCoNet(img_size=224, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=1,
                     dec_num_heads=2, mask_ratio=ratio)  # fmt: skip
    masks = model.mask_generator(8, n)
    assert masks.dtype == torch.bool and masks.shape == (8, n)
    assert masks.sum(dim=1).tolist() == [expected] * 8
    assert len({tuple(m.tolist()) for m in masks}) == 8  # a different permutation per sample


def test_forward_shapes_and_given_mask_is_used(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs, mask_ratio=0.75)
    img1, img2 = _imgs(2, 64, 64)
    pred, mask, target = model(img1, img2)
    assert pred.shape == target.shape == (2, 64, 8 * 8 * 3) and mask.sum(1).tolist() == [48, 48]
    given = torch.zeros(2, 64, dtype=torch.bool)
    given[:, :10] = True
    _, used, _ = model(img1, img2, mask=given)
    assert torch.equal(used, given)
    with pytest.raises(ValueError, match="same number of patches"):
        bad = given.clone()
        bad[0, 20] = True
        model(img1, img2, mask=bad)
    with pytest.raises(ValueError, match=r"shape \(2, 64\)"):
        model(img1, img2, mask=given[:, :32])


@pytest.mark.parametrize("pos_embed", ["cosine", "RoPE100"])
@pytest.mark.parametrize("decoder", ["cross", "cat", "mae"])
def test_non_square_forward_and_backward(tiny_kwargs, pos_embed, decoder):
    model = CroCoNet(**{**tiny_kwargs, "pos_embed": pos_embed, "decoder": decoder})
    img1, img2 = _imgs(2, 48, 80)  # 6x10 tokens, not the construction size
    pred, mask, target = model(img1, img2)
    assert pred.shape == (2, 60, 192) and mask.sum(1).tolist() == [54, 54]
    loss = MaskedMSE()(pred, mask, target)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters()), "every parameter gets a gradient"
    recon = model.unpatchify(target, grid=(6, 10))
    torch.testing.assert_close(recon, img1)


def test_patchify_layout_and_roundtrip(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs)
    img = torch.arange(2 * 3 * 16 * 24, dtype=torch.float32).reshape(2, 3, 16, 24)
    patches = model.patchify(img)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    # token 4 is row 1, col 1; inside a patch: pixel row, pixel col, channel (fastest)
    assert patches[0, 4, :3].tolist() == img[0, :, 8, 8].tolist()
    assert patches[0, 4, 3:6].tolist() == img[0, :, 8, 9].tolist()
    torch.testing.assert_close(model.unpatchify(patches, grid=(2, 3)), img)
    square = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.unpatchify(model.patchify(square)), square)


def test_cat_decoder_uses_image2_and_only_predicts_image1(tiny_kwargs):
    model = CroCoNet(**{**tiny_kwargs, "decoder": "cat"}).eval()
    assert "dec_view_embed" in model.state_dict() and "dec_blocks.0.cross_attn.projq.weight" not in model.state_dict()
    img1, img2 = _imgs(1, 64, 64)
    mask = model.mask_generator(1, 64)
    with torch.no_grad():
        a, _, _ = model(img1, img2, mask=mask)
        b, _, _ = model(img1, torch.randn_like(img2), mask=mask)
    assert a.shape == (1, 64, 192)
    assert (a - b).abs().max() > 1e-4  # the prediction depends on the reference view


def test_mae_decoder_never_sees_image2(tiny_kwargs):
    """The single-view baseline: the same encoder and plain self-attention decoder blocks over image 1 only, so
    any image 2 (even one of another size) gives the same prediction, and image 2 is not even encoded."""
    model = CroCoNet(**{**tiny_kwargs, "decoder": "mae"}).eval()
    keys = model.state_dict()
    assert "dec_view_embed" not in keys and not any("cross_attn" in k for k in keys)
    assert "dec_blocks.1.attn.qkv.weight" in keys
    img1, img2 = _imgs(2, 64, 64)
    mask = model.mask_generator(2, 64)
    calls = []
    model.patch_embed.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    with torch.no_grad():
        a, _, _ = model(img1, img2, mask=mask)
        b, _, _ = model(img1, torch.randn(2, 3, 32, 48), mask=mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert calls == [img1.shape, img1.shape]  # one patch embedding per pass: image 1's
    cross = CroCoNet(**{**tiny_kwargs, "decoder": "cross"}).eval()
    with torch.no_grad():
        c, _, _ = cross(img1, img2, mask=mask)
        d, _, _ = cross(img1, torch.randn_like(img2), mask=mask)
    assert (c - d).abs().max() > 1e-4  # while the cross decoder does look at image 2


def test_cross_decoder_depends_on_image2(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs).eval()
    img1, img2 = _imgs(1, 64, 64)
    mask = model.mask_generator(1, 64)
    with torch.no_grad():
        a = model(img1, img2, mask=mask)[0]
        b = model(img1, img2.flip(-1), mask=mask)[0]
    assert (a - b).abs().max() > 1e-4


def test_bf16_autocast_forward_on_cpu(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs).eval()
    img1, img2 = _imgs(2, 64, 64)
    mask = model.mask_generator(2, 64)
    with torch.no_grad():
        ref = model(img1, img2, mask=mask)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(img1, img2, mask=mask)[0]
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_feature_apis_any_size(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs).eval()
    with torch.no_grad():
        enc = model.encoder_features(torch.randn(2, 3, 40, 72))
        assert len(enc) == tiny_kwargs["enc_depth"] and enc[-1].shape == (2, 45, 128)
        img1, img2 = _imgs(2, 48, 64)
        same = model.binocular_features(img1, img2)
        assert len(same) == tiny_kwargs["enc_depth"] + tiny_kwargs["dec_depth"]
        assert same[0].shape == (2, 48, 128) and same[-1].shape == (2, 48, 96)
        mixed = model.binocular_features(img1, torch.randn(2, 3, 64, 32))  # images of different sizes
        assert mixed[-1].shape == (2, 48, 96)
        last = model.binocular_features(img1, img2, return_all_blocks=False)
        torch.testing.assert_close(last, same[-1])


@pytest.mark.parametrize("pos_embed", ["RoPE100", "cosine"])
@pytest.mark.parametrize(
    "size2, encoder_batches", [((48, 64), [4]), ((64, 32), [2, 2])], ids=["same-size", "different-size"]
)
def test_binocular_features_equal_separate_encoding(tiny_kwargs, pos_embed, size2, encoder_batches, monkeypatch):
    """Both branches of ``binocular_features`` (one batched encoder pass for same-size views, one pass per view
    otherwise) against references that encode each view on its own: ``encoder_features(img1)`` for the encoder
    part, and ``forward`` with nothing masked (one encoder pass per view, same decoder) for the decoder part."""
    model = CroCoNet(**{**tiny_kwargs, "pos_embed": pos_embed}).eval()
    img1, img2 = torch.randn(2, 3, 48, 64), torch.randn(2, 3, *size2)
    batches: list[int] = []  # which branch ran: the batch size of every encoder pass
    encode = model._encode_image

    def spy(img: torch.Tensor, *args, **kwargs):
        batches.append(len(img))
        return encode(img, *args, **kwargs)

    monkeypatch.setattr(model, "_encode_image", spy)
    with torch.no_grad():
        feats = model.binocular_features(img1, img2)
        last = model.binocular_features(img1, img2, return_all_blocks=False)
        assert batches == encoder_batches * 2
        enc1 = model.encoder_features(img1)
        pred, _, _ = model(img1, img2, mask=torch.zeros(2, 48, dtype=torch.bool))
        depth = tiny_kwargs["enc_depth"]
        assert len(feats) == depth + tiny_kwargs["dec_depth"]
        for got, expected in zip(feats[:depth], enc1, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.prediction_head(feats[-1]), pred, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last, feats[-1], atol=1e-5, rtol=1e-5)


def test_official_initialisation(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs)
    sd = model.state_dict()
    assert torch.equal(sd["enc_norm.weight"], torch.ones(128)) and torch.equal(sd["dec_norm.bias"], torch.zeros(96))
    assert torch.equal(sd["decoder_embed.bias"], torch.zeros(96))
    fan = 128 + 128 * 3  # xavier uniform bound of a qkv weight
    assert sd["enc_blocks.0.attn.qkv.weight"].abs().max() <= (6 / fan) ** 0.5
    assert 0.01 < sd["mask_token"].std() < 0.03


def test_unknown_decoder_and_pos_embed_rejected(tiny_kwargs):
    with pytest.raises(ValueError, match="decoder='mlp': expected one of cross, cat, mae"):
        CroCoNet(**{**tiny_kwargs, "decoder": "mlp"})
    with pytest.raises(ValueError, match="pos_embed='learned'"):
        CroCoNet(**{**tiny_kwargs, "pos_embed": "learned"})
