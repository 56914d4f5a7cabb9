"""Depth, segmentation and classification metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from croco.eval.dense import (
    DEPTH_KEYS,
    IGNORE_INDEX,
    ClassificationMetrics,
    DepthMetrics,
    SegmentationMetrics,
    depth_metrics,
    eigen_crop_mask,
)


def image(values) -> torch.Tensor:
    """A (1, 1, H, W) tensor from nested lists."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


# One pixel per threshold bin: delta = 1.2, 1.5, 1.8, 2.5.
GT = image([[1.0, 2.0], [4.0, 5.0]])
PRED = image([[1.2, 3.0], [7.2, 2.0]])
EXPECTED = {
    "d1": 0.25,
    "d2": 0.5,
    "d3": 0.75,
    "abs_rel": (0.2 / 1 + 1.0 / 2 + 3.2 / 4 + 3.0 / 5) / 4,
    "rmse": math.sqrt((0.04 + 1.0 + 10.24 + 9.0) / 4),
    "log10": math.log10(1.2 * 1.5 * 1.8 * 2.5) / 4,
}


def test_depth_metrics_hand_computed_2x2():
    result = depth_metrics(PRED, GT)
    assert list(result) == list(DEPTH_KEYS)
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, rel=1e-6), key


def test_depth_validity_range_and_prediction_clamp():
    gt = image([[1.0, 2.0, 12.0, 0.0], [4.0, 5.0, float("nan"), 9.0]])
    pred = image([[1.2, 3.0, 1.0, 1.0], [7.2, 2.0, 1.0, 20.0]])
    result = depth_metrics(pred, gt, max_depth=10.0)  # 12, 0 and NaN excluded; 20 -> 10 for gt 9
    assert result["abs_rel"] == pytest.approx((2.1 + 1.0 / 9) / 5, rel=1e-6)
    assert result["rmse"] == pytest.approx(math.sqrt((20.28 + 1.0) / 5), rel=1e-6)
    assert result["d1"] == pytest.approx(2 / 5)
    # max_depth 4.5 drops the gt 5 pixel and clamps the 7.2 prediction to 4.5
    assert depth_metrics(PRED, GT, max_depth=4.5)["abs_rel"] == pytest.approx(
        (0.2 + 0.5 + 0.5 / 4) / 3, rel=1e-6
    )
    # NaN predictions become min_depth, inf ones max_depth: never propagated
    non_finite = depth_metrics(image([[float("nan"), float("inf")]]), image([[1.0, 1.0]]))
    assert non_finite["abs_rel"] == pytest.approx((0.999 + 9.0) / 2, rel=1e-6)


def test_no_valid_pixel_gives_nan():
    result = depth_metrics(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(v) for v in result.values())


def test_eigen_crop_at_full_and_half_resolution():
    full = eigen_crop_mask(480, 640)
    assert full.sum() == 426 * 560
    rows, cols = full.nonzero(as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (45, 470, 41, 600)
    half = eigen_crop_mask(240, 320)
    expected = torch.zeros(240, 320, dtype=torch.bool)
    expected[22:235, 20:300] = True  # pixel centres inside rows [22.5, 235.5), cols [20.5, 300.5)
    assert torch.equal(half, expected)


@pytest.mark.parametrize("size", [(480, 640), (240, 320)])
def test_eigen_crop_masks_the_border_pixels(size):
    gt = torch.ones(1, 1, *size)
    pred = torch.where(eigen_crop_mask(*size), 1.0, 2.0)[None, None]
    cropped = depth_metrics(pred, gt, eigen_crop=True)
    assert cropped["abs_rel"] == 0.0 and cropped["d1"] == 1.0
    inside = eigen_crop_mask(*size).float().mean().item()
    assert depth_metrics(pred, gt)["abs_rel"] == pytest.approx(1.0 - inside, rel=1e-5)


def test_two_updates_equal_one_update_on_the_concatenation():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(5, 1, 48, 64, generator=gen) * 12.0
    pred = gt * (1 + 0.3 * torch.randn(5, 1, 48, 64, generator=gen))
    split = DepthMetrics(eigen_crop=True)
    split.update(pred[:2], gt[:2])
    split.update(pred[2:], gt[2:])
    whole = depth_metrics(pred, gt, eigen_crop=True)
    for key, value in split.compute().items():
        assert value.item() == pytest.approx(whole[key], rel=1e-5), key
    split.reset()
    assert split.count == 0


def test_states_keep_their_dtype_when_the_module_is_cast():
    metric = DepthMetrics().to(torch.bfloat16)
    assert metric.count.dtype == torch.int64 and metric.abs_rel.dtype == torch.float64
    metric.update(PRED, GT)
    metric.reset()
    assert metric.abs_rel.dtype == torch.float64


def test_bf16_depth_inputs():
    result = depth_metrics(PRED.bfloat16(), GT.bfloat16())
    reference = depth_metrics(PRED.bfloat16().float(), GT.bfloat16().float())
    assert result == pytest.approx(reference)


def test_constant_depth_prediction():
    gt = image([[1.0, 2.0], [4.0, 8.0]])
    result = depth_metrics(torch.full_like(gt, 2.0), gt)
    assert result["abs_rel"] == pytest.approx((1.0 + 0.0 + 0.5 + 0.75) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4 + 36) / 4))
    assert result["d1"] == pytest.approx(0.25)


def test_miou_ignores_255_and_absent_classes():
    target = torch.tensor([[[0, 0, 1, 1], [IGNORE_INDEX, IGNORE_INDEX, 2, 2]]])
    labels = torch.tensor([[[0, 1, 1, 1], [3, 4, 2, 2]]])  # 3 and 4 predicted only on ignored pixels
    metrics = SegmentationMetrics(num_classes=6)
    metrics.update(labels, target)
    result = metrics.compute()
    # IoU: class 0 = 1/2, class 1 = 2/3, class 2 = 1; classes 3, 4, 5 absent: not averaged in as 0
    assert result["miou"].item() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3, rel=1e-6)
    assert result["pixel_acc"].item() == pytest.approx(5 / 6, rel=1e-6)


def test_a_class_only_predicted_counts_as_zero_iou():
    target = torch.tensor([[[0, 0, 1, 1]]])
    labels = torch.tensor([[[0, 3, 1, 1]]])
    result = SegmentationMetrics(num_classes=5).forward(labels, target)
    assert result["miou"].item() == pytest.approx((0.5 + 1.0 + 0.0) / 3, rel=1e-6)


def test_logits_and_labels_agree_and_accumulate():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 8, 8), generator=gen)
    target[target == 3] = IGNORE_INDEX
    logits = torch.randn(3, 5, 8, 8, generator=gen)
    from_logits, from_labels = SegmentationMetrics(5), SegmentationMetrics(5)
    from_logits.update(logits[:1].bfloat16(), target[:1])
    from_logits.update(logits[1:].bfloat16(), target[1:])
    from_labels.update(logits.bfloat16().float().argmax(1), target)
    a, b = from_logits.compute(), from_labels.compute()
    assert set(a) == {"miou", "pixel_acc"}
    assert all(torch.allclose(a[k], b[k]) for k in a)
    reference = MulticlassAccuracy(5, average="micro", ignore_index=IGNORE_INDEX)(logits.argmax(1), target)
    assert torch.allclose(b["pixel_acc"], reference)


def test_constant_segmentation_prediction():
    target = torch.tensor([[[0, 0, 1], [2, IGNORE_INDEX, 0]]])
    result = SegmentationMetrics(num_classes=5).forward(torch.zeros_like(target), target)
    # class 0: 3 hits over 5 labelled pixels; classes 1 and 2: IoU 0; classes 3, 4 absent
    assert result["miou"].item() == pytest.approx((3 / 5) / 3, rel=1e-6)
    assert result["pixel_acc"].item() == pytest.approx(3 / 5, rel=1e-6)


def test_top1_top5_hand_computed():
    logits = torch.tensor(
        [
            [9.0, 8, 7, 6, 5, 4, 3],  # target 0: top-1
            [9.0, 8, 7, 6, 5, 4, 3],  # target 4: 5th best, top-5 only
            [9.0, 8, 7, 6, 5, 4, 3],  # target 5: neither
            [0.0, 1, 0, 0, 0, 0, 0],  # target 1: top-1
        ]
    )
    metrics = ClassificationMetrics(num_classes=7)
    metrics.update(logits[:2].bfloat16(), torch.tensor([0, 4]))
    metrics.update(logits[2:], torch.tensor([5, 1]))
    result = metrics.compute()
    assert set(result) == {"top1", "top5"}
    assert result["top1"].item() == pytest.approx(0.5)
    assert result["top5"].item() == pytest.approx(0.75)


def test_top5_with_fewer_than_5_classes():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    result = ClassificationMetrics(num_classes=3).forward(logits, torch.tensor([2, 0]))
    assert result["top1"].item() == pytest.approx(0.5)
    assert result["top5"].item() == pytest.approx(1.0)
