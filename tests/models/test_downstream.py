"""Downstream networks: the DPT head against the official one, the released stereo/flow key lists, backbone
initialisation from every checkpoint layout, and the fine-tuning helpers."""

from __future__ import annotations

import pytest
import torch

from croco.models import CroCoNet
from croco.models.checkpoints import CheckpointError, export_official_checkpoint, load_backbone
from croco.models.downstream import (
    CroCoDownstreamBinocular,
    CroCoDownstreamMonocularEncoder,
    LinearProbeHead,
    freeze,
    layer_id,
    set_drop_path,
)
from croco.models.dpt import PixelwiseTaskWithDPT, default_hooks
from croco.utils.config import model_preset
from tests.models.conftest import UPSTREAM
from tests.models.test_upstream_parity import _read_keys

WRAPPERS = {"dpt_monocular_tiny": CroCoDownstreamMonocularEncoder, "dpt_binocular_tiny": CroCoDownstreamBinocular}


@pytest.mark.parametrize("fixture", sorted(WRAPPERS))
def test_dpt_reproduces_the_official_prediction(fixture):
    ref = torch.load(UPSTREAM / f"{fixture}.pt", weights_only=True)
    model = WRAPPERS[fixture](PixelwiseTaskWithDPT(**ref["head_kwargs"]), **ref["kwargs"])
    assert model.head.hooks_idx == ref["hooks_idx"]  # the default hooks are the official ones
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        pred = model.eval()(*ref["inputs"])
    torch.testing.assert_close(pred, ref["pred"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "enc, dec, hooks",
    [(12, None, [2, 5, 8, 11]), (24, None, [5, 11, 17, 23]), (12, 8, [10, 13, 16, 19]), (12, 12, [11, 15, 19, 23]),
     (24, 12, [23, 27, 31, 35]), (12, 24, [11, 19, 27, 35])],
)  # fmt: skip
def test_default_hooks_are_the_official_ones(enc, dec, hooks):
    assert default_hooks(enc, dec) == hooks


@pytest.mark.parametrize("size", [(48, 80), (64, 96), (80, 48), (16, 32)])
def test_dpt_accepts_any_multiple_of_the_patch_size(size):
    """The official head fails on odd token grids (H, W not multiples of 32 with 16-pixel patches)."""
    ref = torch.load(UPSTREAM / "dpt_binocular_tiny.pt", weights_only=True)
    model = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(**ref["head_kwargs"]), **ref["kwargs"]).eval()
    img = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(img, img)
    assert out.shape == (1, ref["head_kwargs"]["num_channels"], *size) and torch.isfinite(out).all()


@pytest.mark.parametrize("task, channels", [("crocostereo", 2), ("crocoflow", 3)])
def test_released_stereo_and_flow_checkpoints_have_our_keys(task, channels):
    """CroCo-Stereo / CroCo-Flow: ViT-L encoder + base decoder + DPT with disparity/flow + confidence channels."""
    expected = _read_keys(f"keys_{task}.tsv")
    with torch.device("meta"):
        model = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=channels),
                                         **model_preset("croco_v2_large_base"))  # fmt: skip
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == dict(expected)
    assert dict(expected)["head.dpt.head.4.weight"][0] == channels


def _pretrained(tmp_path, **kwargs):
    net = CroCoNet(**kwargs)
    return net, export_official_checkpoint(net, tmp_path / "croco.pth")


def test_backbone_from_an_official_export_drops_what_monocular_does_not_use(tmp_path, tiny_kwargs):
    net, path = _pretrained(tmp_path, **tiny_kwargs)
    mono = CroCoDownstreamMonocularEncoder(PixelwiseTaskWithDPT(num_channels=1), **tiny_kwargs)
    summary = load_backbone(mono, path)
    assert "dec_blocks" in summary and "mask_token" in summary and "prediction_head" in summary
    for key, value in mono.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, net.state_dict()[key]), key
    img = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(mono.encoder_features(img, return_all_blocks=False),
                               net.encoder_features(img, return_all_blocks=False))  # fmt: skip


def test_binocular_keeps_the_decoder_and_matches_the_pretrained_features(tmp_path, tiny_kwargs):
    net, path = _pretrained(tmp_path, **tiny_kwargs)
    bino = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=2), **tiny_kwargs)
    load_backbone(bino, path)
    img1, img2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bino.binocular_features(img1, img2)
        theirs = net.binocular_features(img1, img2)
    assert len(ours) == tiny_kwargs["enc_depth"] + tiny_kwargs["dec_depth"]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_backbone_from_a_lightning_checkpoint(tmp_path, tiny_kwargs):
    net = CroCoNet(**tiny_kwargs)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": tiny_kwargs}}, tmp_path / "run.ckpt")
    mono = CroCoDownstreamMonocularEncoder(LinearProbeHead(5), **tiny_kwargs)
    load_backbone(mono, tmp_path / "run.ckpt")
    assert torch.equal(mono.enc_norm.weight, net.enc_norm.weight)


def test_binocular_from_a_single_view_pretraining_keeps_a_random_decoder(tmp_path, tiny_kwargs):
    """A single-view (decoder=mae) pretraining initialises a binocular task's encoder only
    (finetune.init_decoder=false); without that flag its self-attention decoder does not fit, in one line."""
    mae = CroCoNet(**{**tiny_kwargs, "decoder": "mae"})
    state = {f"net.{k}": v for k, v in mae.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": {**tiny_kwargs, "decoder": "mae"}}}, tmp_path / "mae.ckpt")
    bino = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=2), **tiny_kwargs)
    with pytest.raises(CheckpointError, match=r"mae.ckpt: backbone weights do not fit the model: .*decoder='mae'"):
        load_backbone(bino, tmp_path / "mae.ckpt")
    decoder_before = {k: v.clone() for k, v in bino.state_dict().items() if k.startswith("dec_blocks.")}
    summary = load_backbone(bino, tmp_path / "mae.ckpt", with_decoder=False)
    assert "dec_blocks" in summary  # dropped, and said so
    own = bino.state_dict()
    for key, value in decoder_before.items():
        assert torch.equal(own[key], value), key
    for key, value in mae.state_dict().items():
        if key.startswith(("enc_blocks.", "patch_embed.", "enc_norm.")):
            assert torch.equal(own[key], value), key
    with pytest.raises(ValueError, match="model.decoder='mae' never sees image 2"):
        CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=2), **{**tiny_kwargs, "decoder": "mae"})


def test_cosine_positions_are_resampled_to_the_task_size(tmp_path):
    kwargs = {"img_size": 64, "patch_size": 16, "enc_embed_dim": 64, "enc_depth": 2, "enc_num_heads": 4,
              "dec_embed_dim": 32, "dec_depth": 2, "dec_num_heads": 4, "pos_embed": "cosine"}  # fmt: skip
    net, path = _pretrained(tmp_path, **kwargs)
    mono = CroCoDownstreamMonocularEncoder(PixelwiseTaskWithDPT(hooks_idx=[0, 0, 1, 1]), **{**kwargs, "img_size": 96})
    load_backbone(mono, path)
    expected = torch.nn.functional.interpolate(
        net.enc_pos_embed.reshape(1, 4, 4, 64).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1).reshape(36, 64)
    torch.testing.assert_close(mono.enc_pos_embed, expected)


def test_backbone_mismatch_is_one_line_naming_the_difference(tmp_path, tiny_kwargs):
    _, path = _pretrained(tmp_path, **tiny_kwargs)
    mono = CroCoDownstreamMonocularEncoder(LinearProbeHead(3), **{**tiny_kwargs, "enc_embed_dim": 64})
    with pytest.raises(CheckpointError) as info:
        load_backbone(mono, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "enc_embed_dim=128 (model: 64)" in message


def test_backbone_missing_key_is_an_error_not_a_silent_partial_load(tmp_path, tiny_kwargs):
    net = CroCoNet(**tiny_kwargs)
    state = {k: v for k, v in net.state_dict().items() if k != "enc_norm.weight"}
    torch.save({"model": state, "croco_kwargs": tiny_kwargs}, tmp_path / "broken.pth")
    mono = CroCoDownstreamMonocularEncoder(LinearProbeHead(3), **tiny_kwargs)
    with pytest.raises(CheckpointError, match="1 missing .*enc_norm.weight"):
        load_backbone(mono, tmp_path / "broken.pth")


def test_linear_probe_head_pools_normalised_tokens(tiny_kwargs):
    model = CroCoDownstreamMonocularEncoder(LinearProbeHead(7), **tiny_kwargs).eval()
    img = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = model(img)
        tokens = model.encoder_features(img, return_all_blocks=False)
        expected = model.head.fc(model.head.bn(tokens.mean(1)))
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, expected)


def test_freeze_and_layer_ids(tiny_kwargs):
    model = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=1), **tiny_kwargs)
    enc, dec = tiny_kwargs["enc_depth"], tiny_kwargs["dec_depth"]
    assert layer_id(model, "patch_embed.proj.weight") == (0, enc + dec + 2)
    assert layer_id(model, "enc_blocks.2.attn.qkv.weight")[0] == 3
    assert layer_id(model, "decoder_embed.weight")[0] == layer_id(model, "dec_blocks.0.mlp.fc1.weight")[0] == enc + 1
    assert layer_id(model, "dec_blocks.1.norm1.weight")[0] == enc + 2
    assert layer_id(model, "head.dpt.head.4.weight")[0] == layer_id(model, "dec_norm.weight")[0] == enc + dec + 1
    frozen = freeze(model, 2)
    assert frozen and all(n.startswith(("patch_embed.", "enc_blocks.0.", "enc_blocks.1.")) for n in frozen)
    assert model.enc_blocks[2].norm1.weight.requires_grad
    frozen = freeze(model, "backbone")
    assert all(p.requires_grad == n.startswith("head.") for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="freeze=99"):
        freeze(model, 99)


def test_drop_path_is_a_linear_ramp_and_off_in_eval(tiny_kwargs):
    model = CroCoDownstreamMonocularEncoder(PixelwiseTaskWithDPT(num_channels=1), **tiny_kwargs)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.eval()(img)
    set_drop_path(model, 0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.enc_blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(img), before)
        assert not torch.allclose(model.train()(img), before)


def test_a_crocostereo_file_initialises_backbone_and_head_strictly(tmp_path, tiny_kwargs):
    """The official CroCo-Stereo / CroCo-Flow layout: ``{"model", "args": Namespace(croco_args=...)}``."""
    import argparse

    stereo = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=2), **tiny_kwargs)
    args = argparse.Namespace(croco_args=tiny_kwargs, task="stereo", crop=[64, 64])
    torch.save({"model": stereo.state_dict(), "args": args, "epoch": 31}, tmp_path / "crocostereo.pth")
    fresh = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=2), **tiny_kwargs)
    assert "network tensors" in load_backbone(fresh, tmp_path / "crocostereo.pth", with_head=True)
    for key, value in stereo.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    flow = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=3), **tiny_kwargs)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*head.dpt.head.4"):
        load_backbone(flow, tmp_path / "crocostereo.pth", with_head=True)
    load_backbone(flow, tmp_path / "crocostereo.pth")  # the backbone alone fits a flow network
