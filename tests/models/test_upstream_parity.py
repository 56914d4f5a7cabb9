"""Our network against tensors and key lists produced by the official CroCo code."""

from __future__ import annotations

import pytest
import torch

from croco.models import CroCoNet, MaskedMSE
from croco.utils.config import model_preset
from tests.models.conftest import UPSTREAM

TINY = ["tiny_cosine", "tiny_rope100", "tiny_cosine_noim2norm"]
RELEASED = {
    "croco_v1": "keys_CroCo.tsv",
    "croco_v2_base_small": "keys_CroCo_V2_ViTBase_SmallDecoder.tsv",
    "croco_v2_base_base": "keys_CroCo_V2_ViTBase_BaseDecoder.tsv",
    "croco_v2_large_base": "keys_CroCo_V2_ViTLarge_BaseDecoder.tsv",
}


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("name", TINY)
def test_tiny_reference_outputs(name: str, fused: bool):
    ref = torch.load(UPSTREAM / f"{name}.pt", weights_only=True)
    model = CroCoNet(**ref["kwargs"])
    model.load_state_dict(ref["state_dict"], strict=True)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    model.eval()
    with torch.no_grad():
        pred, mask, target = model(ref["img1"], ref["img2"], mask=ref["mask"])
        loss = MaskedMSE(norm_pix_loss=True)(pred, mask, target)
        feat2 = model.encoder_features(ref["img2"], return_all_blocks=False)
    assert torch.equal(mask, ref["mask"])
    torch.testing.assert_close(pred, ref["pred"], atol=1e-5, rtol=0)
    torch.testing.assert_close(target, ref["target"], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref["loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(feat2, ref["enc_feat_img2"], atol=1e-5, rtol=0)


def _read_keys(tsv: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = (UPSTREAM / tsv).read_text().strip().splitlines()[1:]
    out = []
    for row in rows:
        key, shape = row.split("\t")
        out.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())))
    return out


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_released_state_dict_keys_and_shapes(preset: str):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = CroCoNet(**model_preset(preset))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _read_keys(RELEASED[preset])


@pytest.mark.parametrize(
    "preset, total, encoder",
    [("croco_v1", 120.1e6, 85.6e6), ("croco_v2_base_base", 200.3e6, 85.6e6), ("croco_v2_large_base", 417.9e6, 303.1e6)],
)
def test_parameter_counts(preset: str, total: float, encoder: float):
    with torch.device("meta"):
        model = CroCoNet(**model_preset(preset))
    n_total = sum(p.numel() for p in model.parameters())
    n_enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed", "enc_")))
    assert abs(n_total - total) < 0.05e6
    assert abs(n_enc - encoder) < 0.05e6
