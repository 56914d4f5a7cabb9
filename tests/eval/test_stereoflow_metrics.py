"""Stereo, flow and pose metrics: hand-computed values, +inf masking, speed bins, medians, thresholds, and
accumulation over several updates."""

from __future__ import annotations

import math

import pytest
import torch

from croco.eval.stereoflow import FLOW_KEYS, POSE_KEYS, STEREO_KEYS, FlowMetrics, PoseMetrics, StereoMetrics
from croco.models.pose import quaternion_to_matrix

INF = math.inf
NO_UPDATE = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def _values(metric) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


def test_stereo_hand_computed():
    gt = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, INF, 6.0]]]])
    pred = torch.tensor([[[[1.2, 2.0, 6.0], [2.5, 99.0, 7.0]]]])  # errors 0.2, 0, 3, 1.5, (inv), 1
    m = StereoMetrics()
    m.update(pred, gt)
    out = _values(m)
    assert tuple(out) == STEREO_KEYS == ("avgerr", "rmse", "bad0p5", "bad1", "bad2", "bad3")
    errs = [0.2, 0.0, 3.0, 1.5, 1.0]
    assert out["avgerr"] == pytest.approx(sum(errs) / 5, rel=1e-6)
    assert out["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errs) / 5), rel=1e-6)
    assert out["bad0p5"] == pytest.approx(60.0)  # 3, 1.5, 1
    assert out["bad1"] == pytest.approx(40.0)  # strictly greater: 1.0 is not bad@1
    assert out["bad2"] == pytest.approx(20.0) and out["bad3"] == pytest.approx(0.0)


def test_flow_hand_computed_with_speed_bins():
    # ground-truth speeds: 5 (bin 0-10), 20 (10-40), 50 (40+), invalid, 0 (0-10)
    gt = torch.tensor([[[[3.0, 12.0, 30.0, INF, 0.0]], [[4.0, 16.0, 40.0, INF, 0.0]]]])
    pred = gt.clone()
    pred[0, :, 0, 0] += torch.tensor([3.0, 4.0])  # EPE 5, L1 7
    pred[0, :, 0, 1] += torch.tensor([0.5, 0.0])  # EPE 0.5
    pred[0, :, 0, 2] += torch.tensor([-2.0, 0.0])  # EPE 2
    pred[0, :, 0, 3] = 0.0
    pred[0, :, 0, 4] += torch.tensor([0.6, 0.8])  # EPE 1, L1 1.4
    m = FlowMetrics()
    m.update(pred, gt)
    out = _values(m)
    assert tuple(out) == FLOW_KEYS
    assert FLOW_KEYS == (
        "epe",
        "l1err",
        "bad0p5",
        "bad1",
        "bad3",
        "bad5",
        "epe_s0_10",
        "epe_s10_40",
        "epe_s40_inf",
    )
    assert out["epe"] == pytest.approx((5 + 0.5 + 2 + 1) / 4, rel=1e-6)
    assert out["l1err"] == pytest.approx((7 + 0.5 + 2 + 1.4) / 4, rel=1e-6)
    assert out["bad0p5"] == pytest.approx(75.0) and out["bad1"] == pytest.approx(50.0)
    assert out["bad3"] == pytest.approx(25.0) and out["bad5"] == pytest.approx(0.0)
    assert out["epe_s0_10"] == pytest.approx(3.0, rel=1e-6)  # (5 + 1) / 2
    assert out["epe_s10_40"] == pytest.approx(0.5) and out["epe_s40_inf"] == pytest.approx(2.0)


@NO_UPDATE
def test_flow_empty_speed_bin_is_nan_and_empty_metric_is_nan():
    gt = torch.ones(1, 2, 2, 2)
    m = FlowMetrics()
    m.update(gt.clone(), gt)
    out = _values(m)
    assert out["epe"] == 0.0 and out["epe_s0_10"] == 0.0
    assert math.isnan(out["epe_s10_40"]) and math.isnan(out["epe_s40_inf"])
    assert all(math.isnan(v) for v in _values(StereoMetrics()).values())


@pytest.mark.parametrize("cls, channels", [(StereoMetrics, 1), (FlowMetrics, 2)])
def test_two_updates_equal_one_on_the_concatenation(cls, channels):
    torch.manual_seed(0)
    gt = torch.randn(4, channels, 6, 7) * 20
    gt[torch.rand(4, 1, 6, 7).expand_as(gt) < 0.3] = INF
    pred = gt.nan_to_num(posinf=0.0) + torch.randn(4, channels, 6, 7) * 3
    split, whole = cls(), cls()
    split.update(pred[:1], gt[:1])
    split.update(pred[1:], gt[1:])
    whole.update(pred, gt)
    for key, value in whole.compute().items():
        torch.testing.assert_close(split.compute()[key], value, equal_nan=True)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="\\(B, 2, H, W\\)"):
        FlowMetrics().update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def _rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg) / 2
    return quaternion_to_matrix(torch.tensor([math.cos(a), 0.0, 0.0, math.sin(a)]))


def _pose_batch():
    """Rotation errors 3, 10, 20, 40 degrees; translation errors 0, 12, 45, 4 degrees."""
    r_pred = torch.stack([_rot_z(d) for d in (3.0, 10.0, 20.0, 40.0)])
    r_gt = torch.eye(3).expand(4, 3, 3)
    t_gt = torch.tensor([[1.0, 0, 0]] * 4)
    t_pred = torch.stack([torch.tensor([math.cos(math.radians(d)), math.sin(math.radians(d)), 0.0]) * 2
                          for d in (0.0, 12.0, 45.0, 4.0)])  # fmt: skip
    return r_pred, t_pred, r_gt, t_gt


def test_pose_hand_computed():
    m = PoseMetrics()
    m.update(*_pose_batch())
    out = _values(m)
    assert tuple(sorted(out)) == tuple(sorted(POSE_KEYS))
    assert out["rot_mean"] == pytest.approx(18.25, rel=1e-5)
    assert out["rot_median"] == pytest.approx(15.0, rel=1e-5)  # mean of the two middle values 10 and 20
    assert out["trans_mean"] == pytest.approx(61 / 4, rel=1e-5)
    assert out["trans_median"] == pytest.approx(8.0, rel=1e-5)
    assert out["rot_acc5"] == 25.0 and out["rot_acc15"] == 50.0 and out["rot_acc30"] == 75.0
    assert out["trans_acc5"] == 50.0 and out["trans_acc15"] == 75.0 and out["trans_acc30"] == 75.0
    # max(rot, trans): 3, 12, 45, 40
    assert out["acc5"] == 25.0 and out["acc15"] == 50.0 and out["acc30"] == 50.0


@NO_UPDATE
def test_pose_accumulates_and_takes_the_median_over_everything():
    batch = _pose_batch()
    split, whole = PoseMetrics(), PoseMetrics()
    split.update(*(x[:1] for x in batch))
    split.update(*(x[1:] for x in batch))
    whole.update(*batch)
    for key, value in whole.compute().items():
        torch.testing.assert_close(split.compute()[key], value)
    empty = _values(PoseMetrics())
    assert all(math.isnan(v) for v in empty.values())
