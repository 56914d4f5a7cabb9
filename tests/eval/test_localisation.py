import pytest
import torch

from croco.eval.localisation import (
    attention_position_error,
    main,
    measure_localisation,
    record_cross_attention,
    token_positions,
)
from croco.models.blocks import CrossAttention
from croco.models.croco import CroCoNet

TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2,
        "dec_embed_dim": 32, "dec_depth": 2, "dec_num_heads": 2, "mlp_ratio": 2}  # fmt: skip


@pytest.mark.parametrize("pos_embed", ["cosine", "RoPE100"])
def test_recorded_maps_are_the_ones_the_module_uses(pos_embed):
    torch.manual_seed(0)
    net = CroCoNet(**TINY, pos_embed=pos_embed).eval()
    first = next(m for m in net.modules() if isinstance(m, CrossAttention))
    seen = {}
    first.register_forward_hook(lambda m, a, out: seen.update(args=a, out=out))
    with record_cross_attention(net) as maps, torch.no_grad():
        net.binocular_features(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), return_all_blocks=False)
    assert len(maps) == TINY["dec_depth"] and maps[0].shape == (2, 2, 16, 16)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 16))
    memory = seen["args"][1]
    v = first._heads(first.projv(memory))
    rebuilt = first.proj((maps[0] @ v).transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(rebuilt, seen["out"], atol=1e-5, rtol=1e-4)
    with record_cross_attention(net) as maps:  # the hooks are gone after the block
        pass
    net.binocular_features(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32), return_all_blocks=False)
    assert maps == []


def test_position_error_of_ideal_positional_and_uniform_attention():
    grid = (4, 4)
    positions = token_positions(grid)
    shifts = torch.tensor([[1, 0], [0, -1]])
    truth = positions[None] - shifts[:, None].float()
    match = (truth[..., None, :] == positions).all(-1).float()  # one-hot at the true match where it exists
    own = torch.eye(16).expand(2, 16, 16)
    ideal = torch.where(match.sum(-1, keepdim=True) > 0, match, own)[:, None]
    error, own_error, sharpness = attention_position_error(ideal, shifts, grid)
    assert error.item() == 0 and sharpness.item() == 1
    assert own_error.item() == pytest.approx(1.0)  # every inside token is exactly one patch from its match
    error, own_error, _ = attention_position_error(own[:, None], shifts, grid)
    assert error.item() == pytest.approx(own_error.item())
    _, _, sharpness = attention_position_error(torch.full((2, 1, 16, 16), 1 / 16), shifts, grid)
    assert sharpness.item() == pytest.approx(1 / 16)


def test_position_error_over_chosen_tokens_only():
    grid = (4, 4)
    positions = token_positions(grid)
    shifts = torch.tensor([[0, 0]])
    uniform = torch.full((1, 1, 16, 16), 1 / 16)
    ideal = torch.eye(16)[None, None]
    chosen = torch.arange(16)[None] % 2 == 0  # the even tokens attend to their match, the odd ones uniformly
    attention = torch.where(chosen[:, None, :, None], ideal, uniform)
    error, _, sharpness = attention_position_error(attention, shifts, grid, chosen)
    assert error.item() == 0 and sharpness.item() == 1
    error, _, sharpness = attention_position_error(attention, shifts, grid, ~chosen)
    expected = (positions.mean(0) - positions[1::2]).norm(dim=-1).mean()
    assert error.item() == pytest.approx(expected.item()) and sharpness.item() == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="no measured image-1 token"):
        attention_position_error(attention, shifts, grid, torch.zeros(1, 16, dtype=torch.bool))


def test_masked_probe_measures_the_pretraining_pass():
    torch.manual_seed(0)
    net = CroCoNet(**TINY, pos_embed="RoPE100", mask_ratio=0.75)
    views = torch.randn(4, 3, 48, 48)
    unmasked = measure_localisation(net, views)
    masked = measure_localisation(net, views, masked=True)
    again = measure_localisation(net, views, masked=True)
    assert masked.error.shape == unmasked.error.shape == (2, 2)
    torch.testing.assert_close(masked.error, again.error)  # the masks come from the seed
    assert not torch.allclose(masked.error, unmasked.error)


def test_measure_reports_every_block_and_head_and_refuses_small_views():
    torch.manual_seed(0)
    net = CroCoNet(**TINY, pos_embed="RoPE100")
    result = measure_localisation(net, torch.randn(5, 3, 48, 48), batch_size=2)
    assert result.error.shape == result.sharpness.shape == (2, 2) and result.pairs == 5
    assert torch.isfinite(result.error).all() and (result.sharpness >= 1 / 16).all()
    assert "| 1 |" in result.table() and net.training
    with pytest.raises(ValueError, match="too small"):
        measure_localisation(net, torch.randn(2, 3, 40, 48))


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    assert main(["--ckpt", str(tmp_path / "bad.ckpt"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
