"""The stereo / flow losses against direct implementations of the official formulas (naver/croco
``stereoflow/criterion.py``): hand-checked values, +inf masking, huge ground truth, empty masks."""

from __future__ import annotations

import math

import pytest
import torch

from croco.models.stereoflow_losses import (
    STEREOFLOW_LOSSES,
    L1Loss,
    LaplacianLoss,
    LaplacianLossBounded,
    LaplacianLossBounded2,
    build_stereoflow_loss,
    confidence_from_raw,
)

INF = math.inf


def _stereo():
    """2 pixels valid out of 4: errors 1 and 3, raw confidences 0 and 2."""
    gt = torch.tensor([[[[1.0, 2.0], [INF, INF]]]])
    pred = torch.tensor([[[[2.0, -1.0], [5.0, 7.0]], [[0.0, 2.0], [9.0, -9.0]]]])  # disparity + conf
    return pred, gt


def _flow():
    """Flow: pixel (0, 0) errors (1, 2) conf 1; pixel (0, 1) errors (0, 4) conf -1; (1, 0) invalid (v=inf);
    (1, 1) huge ground truth (dropped by the bounded loss only)."""
    gt = torch.tensor([[[[0.0, 1.0], [0.0, 2e4]], [[0.0, 1.0], [INF, 0.0]]]])
    pred = torch.tensor([[[[1.0, 1.0], [3.0, 2e4 + 1]], [[2.0, 5.0], [3.0, 3.0]], [[1.0, -1.0], [0.0, 0.5]]]])
    return pred, gt


def test_l1_hand_computed():
    pred, gt = _stereo()
    assert L1Loss()(pred, gt).item() == pytest.approx((1 + 3) / 2)
    assert L1Loss()(pred[:, :1], gt).item() == pytest.approx(2.0)  # without the confidence channel
    fpred, fgt = _flow()
    # valid pixels (0,0), (0,1), (1,1): |e| = 1, 2, 0, 4, 1, 3
    assert L1Loss()(fpred, fgt).item() == pytest.approx((1 + 2 + 0 + 4 + 1 + 3) / 6)


def test_laplacian_hand_computed():
    pred, gt = _stereo()
    expected = (1 / math.exp(0) + 0 + 3 / math.exp(2) + 2) / 2
    assert LaplacianLoss()(pred, gt).item() == pytest.approx(expected)
    fpred, fgt = _flow()
    expected = ((1 + 2) / math.e + 1 + (0 + 4) / math.exp(-1) - 1 + (1 + 3) / math.exp(0.5) + 0.5) / 3
    assert LaplacianLoss()(fpred, fgt).item() == pytest.approx(expected, rel=1e-6)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_laplacian_bounded_hand_computed():
    fpred, fgt = _flow()
    a, b = 0.25, 4.0

    def term(err, c):
        s = (b - a) * _sig(c) + a
        return err / s + math.log(s)

    expected = (term(3, 1.0) + term(4, -1.0)) / 2  # the |gt| >= 10000 pixel is dropped by default
    assert LaplacianLossBounded()(fpred, fgt).item() == pytest.approx(expected, rel=1e-6)
    kept = (term(3, 1.0) + term(4, -1.0) + term(4, 0.5)) / 3
    assert LaplacianLossBounded(max_gtnorm=None)(fpred, fgt).item() == pytest.approx(kept, rel=1e-6)


def test_laplacian_bounded2_hand_computed():
    pred, gt = _stereo()
    a, b = 3.0, 3.0

    def term(err, c):
        cc = 2 * a * (_sig(c / b) - 0.5)
        return err / math.exp(cc) + cc

    assert LaplacianLossBounded2()(pred, gt).item() == pytest.approx(
        (term(1, 0.0) + term(3, 2.0)) / 2, rel=1e-6
    )
    loss = LaplacianLossBounded2(a=1.0, b=2.0)
    cc = [2 * (_sig(c / 2) - 0.5) for c in (0.0, 2.0)]
    expected = (1 / math.exp(cc[0]) + cc[0] + 3 / math.exp(cc[1]) + cc[1]) / 2
    assert loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(STEREOFLOW_LOSSES))
def test_matches_the_official_indexing_form_on_random_data(name):
    torch.manual_seed(0)
    gt = torch.randn(2, 2, 5, 6) * 3
    gt[:, :, 1:3, 2] = INF
    pred = torch.randn(2, 3, 5, 6)
    loss = build_stereoflow_loss(name)
    mask = torch.isfinite(gt[:, 0])
    value, conf = pred[:, :2], pred[:, 2]
    err = (gt - value).abs()
    if name == "l1":
        expected = err.permute(0, 2, 3, 1)[mask].mean()
    else:
        if name == "laplacian":
            s = conf.exp()
        elif name == "laplacian_bounded":
            mask = mask & (gt.square().sum(1).sqrt() < 1e4)
            s = 3.75 * torch.sigmoid(conf) + 0.25
        else:
            s = (6 * (torch.sigmoid(conf / 3) - 0.5)).exp()
        expected = (err.sum(1)[mask] / s[mask] + s.log()[mask]).mean()
    torch.testing.assert_close(loss(pred, gt), expected)


@pytest.mark.parametrize("name", sorted(STEREOFLOW_LOSSES))
@pytest.mark.parametrize("channels", [1, 2])
def test_no_valid_pixel_gives_zero_with_a_graph(name, channels):
    gt = torch.full((1, channels, 3, 3), INF)
    pred = torch.randn(1, channels + 1, 3, 3, requires_grad=True)
    loss = build_stereoflow_loss(name)(pred, gt)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad == 0)


@pytest.mark.parametrize("name", sorted(STEREOFLOW_LOSSES))
def test_invalid_pixels_get_no_gradient_and_nan_there_is_harmless(name):
    gt = torch.tensor([[[[1.0, INF]]]])
    pred = torch.tensor([[[[0.5, math.nan]], [[0.3, math.nan]]]], requires_grad=True)
    loss = build_stereoflow_loss(name)(pred, gt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert pred.grad[..., 1].abs().sum() == 0 and pred.grad[0, 0, 0, 0] != 0


def test_a_flow_pixel_with_one_infinite_component_is_invalid():
    gt = torch.tensor([[[[1.0, 1.0]], [[1.0, INF]]]])
    pred = torch.zeros(1, 3, 1, 2)
    assert L1Loss()(pred, gt).item() == pytest.approx(1.0)  # only the first pixel, both components


def test_registry_errors_and_shape_checks():
    with pytest.raises(ValueError, match="allowed: l1, laplacian, laplacian_bounded, laplacian_bounded2"):
        build_stereoflow_loss("l2")
    with pytest.raises(ValueError, match="confidence channel"):
        LaplacianLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match"):
        L1Loss()(torch.zeros(1, 2, 2, 3), torch.zeros(1, 1, 2, 2))


def test_confidence_from_raw_is_the_scale_the_loss_divides_by():
    conf = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(confidence_from_raw("laplacian", conf), conf.exp())
    torch.testing.assert_close(
        confidence_from_raw("laplacian_bounded", conf), 3.75 * torch.sigmoid(conf) + 0.25
    )
    torch.testing.assert_close(confidence_from_raw("laplacian_bounded2", conf, a=2.0, b=1.0),
                               (4 * (torch.sigmoid(conf) - 0.5)).exp())  # fmt: skip
    for name in ("laplacian", "laplacian_bounded", "laplacian_bounded2"):
        assert torch.all(confidence_from_raw(name, conf).diff() > 0)  # higher raw conf = more uncertain
    with pytest.raises(ValueError, match="no confidence"):
        confidence_from_raw("l1", conf)


def test_bf16_inputs_are_computed_in_float32():
    pred, gt = _stereo()
    loss = LaplacianLossBounded2()(pred.bfloat16(), gt.bfloat16())
    assert loss.dtype == torch.float32
