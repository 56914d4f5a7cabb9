"""Depth losses: SILog and log-L1 against their formulas, invalid pixels, empty masks, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from croco.models.losses import (
    DEPTH_LOSSES,
    LogL1Loss,
    SILogLoss,
    build_depth_loss,
    depth_from_prediction,
    prediction_from_depth,
)


def random_depth_batch(shape=(2, 1, 6, 7), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen) * 9.0 + 0.5
    pred = torch.randn(shape, generator=gen) * 0.3 + target.log()
    valid = torch.rand(shape, generator=gen) > 0.3
    return pred, target, valid


def silog_formula(pred, target, valid, variance_focus=0.85, scale=10.0) -> float:
    d = pred[valid].double() - target[valid].double().log()
    return scale * math.sqrt(float((d**2).mean() - variance_focus * d.mean() ** 2))


def test_prediction_is_log_depth():
    depth = torch.tensor([0.25, 1.0, 3.5, 10.0])
    assert torch.allclose(prediction_from_depth(depth), depth.log())
    assert torch.allclose(depth_from_prediction(prediction_from_depth(depth)), depth)
    assert depth_from_prediction(torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("variance_focus", [0.85, 0.5, 1.0])
def test_silog_equals_the_formula_over_the_batchs_valid_pixels(variance_focus):
    pred, target, valid = random_depth_batch()
    valid[1, 0, :4] = False  # images with different valid counts: pixels pooled over the batch, not per image
    loss = SILogLoss(variance_focus=variance_focus)(pred, target, valid)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(silog_formula(pred, target, valid, variance_focus), rel=1e-5)


def test_silog_hand_computed_constant_offset():
    target = torch.tensor([1.0, 2.0, 5.0]).view(1, 1, 1, 3)
    pred = target.log() + 0.2  # d = 0.2 everywhere
    valid = torch.ones_like(target, dtype=torch.bool)
    assert SILogLoss()(pred, target, valid).item() == pytest.approx(
        10 * math.sqrt(0.04 - 0.85 * 0.04), rel=1e-5
    )
    assert SILogLoss(variance_focus=0.0, scale=1.0)(pred, target, valid).item() == pytest.approx(
        0.2, rel=1e-5
    )


def test_silog_with_full_variance_focus_is_scale_invariant():
    pred, target, valid = random_depth_batch(seed=1)
    loss = SILogLoss(variance_focus=1.0)
    reference = loss(pred, target, valid)
    for factor in (0.1, 3.0, 42.0):  # pred depth * factor == log-depth + log(factor)
        scaled = prediction_from_depth(depth_from_prediction(pred) * factor)
        assert loss(scaled, target, valid).item() == pytest.approx(reference.item(), rel=1e-4)
    assert SILogLoss(variance_focus=0.85)(pred + math.log(3.0), target, valid) > SILogLoss()(
        pred, target, valid
    )


def test_silog_stays_finite_when_the_residuals_are_constant():
    target = torch.full((1, 1, 4, 4), 2.0)
    pred = (target.log() + 0.7).requires_grad_()
    loss = SILogLoss(variance_focus=1.0)(pred, target, torch.ones_like(target, dtype=torch.bool))
    assert loss.item() == pytest.approx(10 * math.sqrt(1e-8), rel=1e-3)  # only eps is left
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_log_l1_hand_computed():
    target = torch.tensor([1.0, math.e, math.e**2, 7.0]).view(1, 1, 2, 2)
    pred = torch.tensor([0.5, 1.0, 1.0, 123.0]).view(1, 1, 2, 2)
    valid = torch.tensor([True, True, True, False]).view(1, 1, 2, 2)
    assert LogL1Loss()(pred, target, valid).item() == pytest.approx((0.5 + 0.0 + 1.0) / 3, rel=1e-6)


@pytest.mark.parametrize("loss", [SILogLoss(), LogL1Loss()], ids=["silog", "log_l1"])
def test_bad_targets_are_dropped_even_when_marked_valid(loss):
    pred, target, valid = random_depth_batch(seed=2)
    good = valid.clone()
    bad = [(0, 0, 0, 0), (0, 0, 1, 1), (1, 0, 2, 2), (1, 0, 3, 3)]
    for (b, c, y, x), value in zip(bad, [0.0, -1.0, float("nan"), float("inf")]):
        target[b, c, y, x] = value
        valid[b, c, y, x] = True
        good[b, c, y, x] = False
    pred.requires_grad_()
    value = loss(pred, target, valid)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(loss(pred, target, good).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("loss", [SILogLoss(), LogL1Loss()], ids=["silog", "log_l1"])
def test_no_valid_pixel_gives_zero_with_a_graph(loss):
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = torch.rand(2, 1, 4, 4) + 1.0
    value = loss(pred, target, torch.zeros_like(target, dtype=torch.bool))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    assert loss(pred, torch.zeros_like(target)).item() == 0.0  # no valid mask given, all targets invalid


@pytest.mark.parametrize("loss", [SILogLoss(), LogL1Loss()], ids=["silog", "log_l1"])
def test_bf16_predictions_and_missing_mask(loss):
    pred, target, _ = random_depth_batch(seed=3)
    value = loss(pred.bfloat16(), target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(pred.bfloat16().float(), target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        loss(pred, target[:, :, :-1])


def test_registry_and_builder():
    assert DEPTH_LOSSES == {"silog": SILogLoss, "log_l1": LogL1Loss}
    silog = build_depth_loss("silog", variance_focus=0.5, scale=1.0)
    assert isinstance(silog, SILogLoss) and silog.variance_focus == 0.5 and silog.scale == 1.0
    assert isinstance(build_depth_loss("log_l1"), LogL1Loss)
    with pytest.raises(ValueError, match=r"unknown depth loss 'l2'; allowed: log_l1, silog"):
        build_depth_loss("l2")
    with pytest.raises(ValueError, match="variance_focus"):
        SILogLoss(variance_focus=1.5)
