"""Official checkpoint layouts: reading, refusing, exporting, resizing."""

from __future__ import annotations

import argparse

import pytest
import torch

from croco.models import CheckpointError, CroCoNet, export_official_checkpoint, load_official_checkpoint
from croco.models.checkpoints import parse_model_string
from tests.models.conftest import UPSTREAM


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_croco_kwargs_layout(tmp_path):
    ref = torch.load(UPSTREAM / "tiny_rope100.pt", weights_only=True)
    torch.save({"model": ref["state_dict"], "croco_kwargs": ref["kwargs"]}, tmp_path / "v2.pth")
    model = load_official_checkpoint(tmp_path / "v2.pth").eval()
    with torch.no_grad():
        pred = model(ref["img1"], ref["img2"], mask=ref["mask"])[0]
    torch.testing.assert_close(pred, ref["pred"], atol=1e-5, rtol=0)


def test_args_namespace_layout_with_pickled_namespace(tmp_path):
    ref = torch.load(UPSTREAM / "tiny_cosine.pt", weights_only=True)
    kw = ref["kwargs"]
    model_string = "CroCoNet(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"
    args = argparse.Namespace(model=model_string, lr=1.5e-4, output_dir="./out")
    torch.save({"model": ref["state_dict"], "args": args, "epoch": 3, "optimizer": {}}, tmp_path / "ckpt.pth")
    model = load_official_checkpoint(tmp_path / "ckpt.pth")
    assert model.croco_kwargs["enc_embed_dim"] == 64 and model.pos_embed == "cosine"
    assert torch.equal(model.state_dict()["mask_token"], ref["state_dict"]["mask_token"])


def test_model_only_layout_uses_v1_defaults(tmp_path):
    v1 = CroCoNet()  # the released CroCo.pth holds only {"model": ...}
    torch.save({"model": v1.state_dict()}, tmp_path / "CroCo.pth")
    loaded = load_official_checkpoint(tmp_path / "CroCo.pth")
    assert loaded.croco_kwargs == v1.croco_kwargs and _same_weights(loaded, v1)


def test_pickled_callable_is_refused(tmp_path):
    torch.save({"model": {}, "hook": print}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: .*references print\)"):
        load_official_checkpoint(tmp_path / "evil.pth")


@pytest.mark.parametrize(
    "text, message",
    [
        ("CroCoNet(enc_depth=__import__('os').system('true'))", "is not a literal"),
        ("os.system('true')", "expected 'CroCoNet"),
        ("CroCoNet(12)", "expected 'CroCoNet"),
        ("CroCoNet(enc_dept=4)", r"unknown CroCoNet argument\(s\) \['enc_dept'\]"),
        ("CroCoNet(", "cannot parse"),
    ],
)
def test_model_string_is_parsed_never_evaluated(text, message):
    with pytest.raises(CheckpointError, match=message):
        parse_model_string(text)


def test_model_string_literals():
    kw = parse_model_string("CroCoNet(enc_embed_dim=1024, img_size=(352, 704), pos_embed='RoPE100')")
    assert kw == {"enc_embed_dim": 1024, "img_size": (352, 704), "pos_embed": "RoPE100"}


def test_bad_files_give_one_line_errors(tmp_path, tiny_kwargs):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_checkpoint(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    export_official_checkpoint(CroCoNet(**tiny_kwargs), good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        load_official_checkpoint(tmp_path / "cut.pth")
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' state dict"):
        load_official_checkpoint(tmp_path / "lightning.ckpt")
    sd = CroCoNet(**tiny_kwargs).state_dict()
    sd.pop("enc_norm.weight")
    torch.save({"model": sd, "croco_kwargs": tiny_kwargs}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. enc_norm\.weight\)") as err:
        load_official_checkpoint(tmp_path / "partial.pth")
    assert "\n" not in str(err.value)


def test_export_roundtrip_and_official_keys(tmp_path, tiny_kwargs):
    model = CroCoNet(**tiny_kwargs)
    path = export_official_checkpoint(model, tmp_path / "sub" / "export.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "croco_kwargs"} and "decoder" not in raw["croco_kwargs"]
    assert _same_weights(load_official_checkpoint(path), model)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["export.pth"]  # no temporary file left
    with pytest.raises(ValueError, match="no official equivalent"):
        export_official_checkpoint(CroCoNet(**{**tiny_kwargs, "decoder": "cat"}), tmp_path / "cat.pth")


def test_load_at_another_size_resamples_cosine_buffers(tmp_path):
    ref = torch.load(UPSTREAM / "tiny_cosine.pt", weights_only=True)  # 64x64, 4x4 grid
    torch.save({"model": ref["state_dict"], "croco_kwargs": ref["kwargs"]}, tmp_path / "v1.pth")
    model = load_official_checkpoint(tmp_path / "v1.pth", img_size=(64, 128))
    assert model.enc_pos_embed.shape == (32, 64) and model.dec_pos_embed.shape == (32, 32)
    src = ref["state_dict"]["enc_pos_embed"].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(src, size=(4, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.enc_pos_embed, expected.permute(0, 2, 3, 1).reshape(32, 64))
    pred, _, _ = model(torch.randn(1, 3, 64, 128), torch.randn(1, 3, 64, 128))
    assert pred.shape == (1, 32, 768)
