"""The optimisation recipe: schedule against the official formula, lr scaling, weight-decay groups."""

from __future__ import annotations

import io
import math

import pytest
import torch

from croco.models import CroCoNet
from croco.tasks.optim import (
    OptimRecipe,
    WarmupCosineLambda,
    build_optimizer,
    build_scheduler,
    param_groups,
    rebase_scheduler,
    scaled_lr,
    warmup_cosine_lr,
)

TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2, "dec_embed_dim": 32,
            "dec_depth": 1, "dec_num_heads": 2}  # fmt: skip


def official_adjust_learning_rate(
    epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float
):
    """The official ``utils/misc.py: adjust_learning_rate`` formula (no clamping)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))
    )


@pytest.mark.parametrize(("warmup", "horizon", "min_lr"), [(40, 800, 0.0), (12, 250, 0.0), (1, 10, 1e-6)])
def test_schedule_matches_official_formula(warmup, horizon, min_lr):
    for t in torch.linspace(0, horizon, 997).tolist():
        ours = warmup_cosine_lr(t, peak_lr=3e-4, warmup_epochs=warmup, epochs=horizon, min_lr=min_lr)
        ref = official_adjust_learning_rate(t, 3e-4, min_lr, warmup, horizon)
        assert ours == pytest.approx(ref, rel=1e-12, abs=1e-18)


def test_schedule_landmarks_of_the_v1_recipe():
    kw = {"peak_lr": 1.0, "warmup_epochs": 40, "epochs": 800}
    assert warmup_cosine_lr(0.0, **kw) == 0.0  # warm-up starts at 0, as in the official formula
    assert warmup_cosine_lr(20.0, **kw) == pytest.approx(0.5)
    assert warmup_cosine_lr(40.0, **kw) == pytest.approx(1.0)
    assert warmup_cosine_lr(400.0, **kw) == pytest.approx(0.541, abs=5e-4)  # where v1 stops
    assert warmup_cosine_lr(800.0, **kw) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine_lr(900.0, **kw) == pytest.approx(0.0, abs=1e-15)  # clamped past the horizon


def test_lambda_lr_steps_per_optimizer_step_in_fractional_epochs():
    recipe = OptimRecipe(blr=1.5e-4, warmup_epochs=2, epochs=5)
    net = torch.nn.Linear(4, 4)
    peak = 1e-3
    opt = build_optimizer(net, recipe, peak)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10, peak_lr=peak)
    seen = []
    for _ in range(60):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [warmup_cosine_lr(k / 10, peak_lr=peak, warmup_epochs=2, epochs=5) for k in range(60)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert seen[0] == 0.0
    assert all(g["lr"] == opt.param_groups[0]["lr"] for g in opt.param_groups)


def test_min_lr_is_absolute_in_every_group():
    recipe = OptimRecipe(min_lr=1e-5, warmup_epochs=1, epochs=2)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(net, recipe, 1e-3)
    sched = build_scheduler(opt, recipe, steps_per_epoch=1, peak_lr=1e-3)
    for _ in range(2):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5])


def test_scheduler_state_survives_a_weights_only_round_trip():
    recipe = OptimRecipe(warmup_epochs=1, epochs=4)
    opt = build_optimizer(torch.nn.Linear(2, 2), recipe, 1.0)
    sched = build_scheduler(opt, recipe, steps_per_epoch=7, peak_lr=1.0)
    for _ in range(5):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(torch.nn.Linear(2, 2), recipe, 1.0)
    sched2 = build_scheduler(opt2, recipe, steps_per_epoch=3, peak_lr=1.0)  # different until restored
    sched2.load_state_dict(state)
    assert isinstance(sched2.lr_lambdas[0], WarmupCosineLambda)
    assert sched2.lr_lambdas[0].steps_per_epoch == 7
    assert sched2.last_epoch == 5


def test_lr_scaling_rule():
    recipe = OptimRecipe(blr=1.5e-4)
    assert scaled_lr(recipe, 256) == pytest.approx(1.5e-4)  # v1: 4 GPUs x 64
    assert scaled_lr(recipe, 512) == pytest.approx(3e-4)  # v2 ViT-L: 8 GPUs x 64
    assert scaled_lr(OptimRecipe(lr=1e-3), 512) == 1e-3  # explicit lr is not scaled
    with pytest.raises(ValueError, match="effective batch"):
        scaled_lr(recipe, 0)


def test_recipe_rejects_unknown_keys_and_bad_horizons():
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) \['lr_sched'\]; allowed: .*warmup_epochs"):
        OptimRecipe.from_mapping({"lr_sched": 1})
    with pytest.raises(ValueError, match=r"^optim.epochs=10: expected the cosine horizon > optim.warmup_epochs=10$"):
        OptimRecipe(warmup_epochs=10, epochs=10)
    for key, value in [("blr", -1.0), ("lr", 0.0), ("clip_grad", -1.0), ("warmup_epochs", float("nan"))]:
        with pytest.raises(ValueError, match=rf"^optim.{key}={value!r}: expected"):
            OptimRecipe(**{key: value})
    assert OptimRecipe.from_mapping({"betas": [0.9, 0.99]}).betas == (0.9, 0.99)


@pytest.mark.parametrize("decoder", ["cross", "cat"])
def test_weight_decay_groups_on_croconet(decoder):
    net = CroCoNet(**TINY, decoder=decoder)
    decay, no_decay = param_groups(net.named_parameters(), weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "mask_token" in decay["names"]  # 3-D: decayed, as in the official code
    assert "patch_embed.proj.weight" in decay["names"]
    assert "decoder_embed.weight" in decay["names"] and "prediction_head.weight" in decay["names"]
    assert "patch_embed.proj.bias" in no_decay["names"]
    layer_norms = [n for n, m in net.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms
    for name in layer_norms:
        assert f"{name}.weight" in no_decay["names"] and f"{name}.bias" in no_decay["names"]
    assert all(n.endswith(".bias") or net.get_parameter(n).ndim <= 1 for n in no_decay["names"])
    assert all(not n.endswith(".bias") and net.get_parameter(n).ndim > 1 for n in decay["names"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_frozen_parameters_are_left_out():
    net = CroCoNet(**TINY)
    net.patch_embed.proj.weight.requires_grad_(False)
    names = [n for g in param_groups(net.named_parameters(), 0.05) for n in g["names"]]
    assert "patch_embed.proj.weight" not in names
    opt = build_optimizer(net, OptimRecipe(), 1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters())) - 1


def test_rebase_keeps_the_epoch_position_when_steps_per_epoch_and_peak_change():
    recipe = OptimRecipe(warmup_epochs=2, epochs=10, min_lr=1e-6)
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, recipe, lr=1e-3)
    sched = build_scheduler(opt, recipe, steps_per_epoch=100, peak_lr=1e-3)
    for _ in range(350):  # epoch 3.5 of a run with 100 steps per epoch
        opt.step()
        sched.step()
    assert rebase_scheduler(sched, steps_per_epoch=100, peak_lr=1e-3, min_lr=1e-6) is None  # nothing changed
    # relaunched with twice the devices: 50 steps per epoch, lr scaled x2 -> same epoch, new peak
    assert rebase_scheduler(sched, steps_per_epoch=50, peak_lr=2e-3, min_lr=1e-6) == pytest.approx(3.5)
    assert sched.last_epoch == 175
    expected = warmup_cosine_lr(3.5, peak_lr=2e-3, warmup_epochs=2, epochs=10, min_lr=1e-6)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected] * len(opt.param_groups))
    opt.step()
    sched.step()  # and it continues along the new schedule
    expected = warmup_cosine_lr(176 / 50, peak_lr=2e-3, warmup_epochs=2, epochs=10, min_lr=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_layer_decay_scales_each_depth_and_survives_a_rebase():
    from croco.models.downstream import CroCoDownstreamBinocular, layer_id
    from croco.models.dpt import PixelwiseTaskWithDPT

    net = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(hooks_idx=[0, 0, 1, 1]), **TINY)
    recipe = OptimRecipe(lr=1e-3, layer_decay=0.5, warmup_epochs=0, epochs=10)
    optimizer = build_optimizer(net, recipe, lr=1e-3, layer_of=lambda name: layer_id(net, name))
    lr_of = {name: group["lr"] for group in optimizer.param_groups for name in group["names"]}
    top = 1 + 1 + 1  # 1 encoder block, 1 decoder block, then the head
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5**top)
    assert lr_of["enc_blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** (top - 1))
    assert lr_of["dec_blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** (top - 2))
    assert lr_of["head.dpt.head.4.weight"] == pytest.approx(1e-3)
    assert {g["weight_decay"] for g in optimizer.param_groups if "enc_blocks.0.norm1.weight" in g["names"]} == {0.0}
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=10, peak_lr=1e-3)
    rebase_scheduler(scheduler, steps_per_epoch=20, peak_lr=2e-3)
    peaks = {g["group"]: base for g, base in zip(optimizer.param_groups, scheduler.base_lrs)}
    assert peaks["decay/depth0"] == pytest.approx(2e-3 * 0.5**top) and peaks[f"decay/depth{top}"] == pytest.approx(2e-3)


def test_layer_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="optim.layer_decay=1.5"):
        OptimRecipe(layer_decay=1.5)
