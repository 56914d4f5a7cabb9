"""Accuracy metrics of the monocular downstream tasks: depth, semantic segmentation, classification.

All are ``torchmetrics`` metrics (sum states, summed across DDP ranks), so a task updates them every validation
step and logs ``compute()`` at the end of the epoch. They run on CPU or GPU in float32; bf16 inputs are cast.

* :class:`DepthMetrics`: the NYUv2 depth protocol of Eigen et al. (NeurIPS 2014) as implemented by BTS
  (Lee et al. 2019), AdaBins (Bhat et al. 2021) and MultiMAE (Bachmann et al. 2022): threshold accuracies
  ``d1, d2, d3`` (fraction of pixels with ``max(pred/gt, gt/pred) < 1.25, 1.25^2, 1.25^3``), ``abs_rel``
  (mean ``|pred - gt| / gt``), ``rmse`` (``sqrt(mean (pred - gt)^2)``) and ``log10`` (mean
  ``|log10 pred - log10 gt|``). Valid ground truth is finite and in ``(min_depth, max_depth)`` (0.001, 10 m
  for NYUv2); predictions are clamped to ``[min_depth, max_depth]`` (NaN to ``min_depth``, +inf to
  ``max_depth``) as the reference evaluation code does; ``eigen_crop`` keeps only the Eigen crop.
  Every mean, RMSE included, is taken over ALL valid pixels of the dataset together (pixel-level). BTS and
  AdaBins average per-image values instead, so their numbers can differ slightly from ours on the same
  predictions; with images of equal valid-pixel counts, the two agree for every metric except RMSE.
* :class:`SegmentationMetrics`: mean IoU (``MulticlassJaccardIndex``, macro) and pixel accuracy
  (``MulticlassAccuracy``, micro), with :data:`IGNORE_INDEX` (255, from ``croco.data.dense``: pixels without
  a label) left out of both.
* :class:`ClassificationMetrics`: top-1 and top-5 accuracy (``MulticlassAccuracy``, micro, ``top_k``).

:func:`depth_metrics` is a one-shot functional form of :class:`DepthMetrics` (tests, benchmarks, baselines:
a constant prediction can be scored like any other).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from croco.data.dense import IGNORE_INDEX

__all__ = [
    "DEPTH_KEYS",
    "EIGEN_CROP",
    "EIGEN_CROP_FRAME",
    "IGNORE_INDEX",
    "ClassificationMetrics",
    "DepthMetrics",
    "SegmentationMetrics",
    "depth_metrics",
    "eigen_crop_mask",
]

DEPTH_KEYS = ("d1", "d2", "d3", "abs_rel", "rmse", "log10")

EIGEN_CROP = (45, 471, 41, 601)
"""The Eigen et al. evaluation crop of NYUv2: rows 45:471 and columns 41:601 (top, bottom, left, right)."""

EIGEN_CROP_FRAME = (480, 640)
"""The image size (height, width) :data:`EIGEN_CROP` is given in."""


def _crop_range(size: int, start: int, stop: int, full: int) -> tuple[int, int]:
    """Pixels ``[a, b)`` of a ``size`` axis whose centres lie in ``[start / full, stop / full)`` of the axis.

    Exact rational arithmetic: pixel ``i`` is kept when ``start <= (i + 0.5) * full / size < stop``.
    """
    a = math.ceil(Fraction(2 * start * size - full, 2 * full))
    b = math.ceil(Fraction(2 * stop * size - full, 2 * full))
    return max(a, 0), min(max(b, 0), size)


def eigen_crop_mask(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool (height, width) mask of the Eigen crop, scaled to any image size.

    The crop is a fixed fraction of the image: rows ``[45/480, 471/480)`` and columns ``[41/640, 601/640)``
    (:data:`EIGEN_CROP` in :data:`EIGEN_CROP_FRAME`). A pixel is kept when its centre lies in that rectangle,
    which at 480x640 gives exactly rows 45:471 and columns 41:601, and at 240x320 rows 22:235, columns 20:300.
    """
    top, bottom, left, right = EIGEN_CROP
    full_h, full_w = EIGEN_CROP_FRAME
    r0, r1 = _crop_range(height, top, bottom, full_h)
    c0, c1 = _crop_range(width, left, right, full_w)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[r0:r1, c0:c1] = True
    return mask


class DepthMetrics(Metric):
    """The NYUv2 depth metrics, accumulated over all valid pixels of every update (see the module docstring).

    ``update(pred_depth, target)``: predicted and ground-truth depth in metres, same shape (B, 1, H, W) (any
    ``(..., H, W)`` works). ``compute()`` returns a dict of 0-d tensors with keys :data:`DEPTH_KEYS`; NaN when no
    valid pixel was seen.
    """

    is_differentiable = False
    higher_is_better = None  # d1..d3 higher, errors lower
    full_state_update = False
    _COUNTS = ("count", "d1", "d2", "d3")
    _SUMS = ("abs_rel", "sq_err", "log10")

    def __init__(
        self, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.eigen_crop = bool(eigen_crop)
        # A dataset holds hundreds of millions of pixels: int64 counts, float64 sums.
        for name in self._COUNTS:
            self.add_state(name, default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in self._SUMS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DepthMetrics:
        """Move the states like any module, but keep the sums float64: torchmetrics guards its states against
        ``.half()`` and the like, not against ``.to(dtype)`` (which a bf16-true Lightning precision calls)."""
        this = super()._apply(fn, *args, **kwargs)
        for name in self._SUMS:
            setattr(this, name, getattr(this, name).double())
            this._defaults[name] = this._defaults[name].double()
        return this

    def update(self, pred_depth: torch.Tensor, target: torch.Tensor) -> None:
        if pred_depth.shape != target.shape or pred_depth.ndim < 2:
            raise ValueError(
                f"pred_depth and target must have the same (..., H, W) shape, got {tuple(pred_depth.shape)} "
                f"and {tuple(target.shape)}"
            )
        pred, gt = pred_depth.detach().float(), target.detach().float()
        valid = torch.isfinite(gt) & (gt > self.min_depth) & (gt < self.max_depth)
        if self.eigen_crop:
            valid = valid & eigen_crop_mask(gt.shape[-2], gt.shape[-1], device=gt.device)
        pred = torch.nan_to_num(pred, nan=self.min_depth, posinf=self.max_depth, neginf=self.min_depth)
        pred = pred.clamp(self.min_depth, self.max_depth)
        gt = torch.where(valid, gt, torch.ones_like(gt))  # keeps the logs and ratios below finite
        pred = torch.where(valid, pred, gt)

        def total(x: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, x, torch.zeros_like(x)).sum(dtype=torch.float64)

        ratio = torch.maximum(pred / gt, gt / pred)
        self.count += valid.sum()
        self.d1 += (valid & (ratio < 1.25)).sum()
        self.d2 += (valid & (ratio < 1.25**2)).sum()
        self.d3 += (valid & (ratio < 1.25**3)).sum()
        self.abs_rel += total((pred - gt).abs() / gt)
        self.sq_err += total((pred - gt) ** 2)
        self.log10 += total((pred.log10() - gt.log10()).abs())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.double()
        mean = {k: (getattr(self, k).double() / n).float() for k in ("d1", "d2", "d3", "abs_rel", "log10")}
        mean["rmse"] = (self.sq_err / n).sqrt().float()
        return {k: mean[k] for k in DEPTH_KEYS}


def depth_metrics(pred_depth: torch.Tensor, target: torch.Tensor, **options: Any) -> dict[str, float]:
    """One-shot :class:`DepthMetrics` (``options``: ``min_depth``, ``max_depth``, ``eigen_crop``) as floats."""
    metric = DepthMetrics(**options).to(pred_depth.device)
    metric.update(pred_depth, target)
    return {k: float(v) for k, v in metric.compute().items()}


def _as_class_input(preds: torch.Tensor) -> torch.Tensor:
    """Scores as float32 (bf16 logits included), labels as int64."""
    return preds.float() if preds.is_floating_point() else preds.long()


class SegmentationMetrics(MetricCollection):
    """Mean IoU and pixel accuracy of a semantic segmentation, ``compute()`` -> ``{"miou", "pixel_acc"}``.

    ``update(preds, target)``: ``preds`` logits (B, C, H, W) (argmax taken) or labels (B, H, W); ``target``
    labels (B, H, W), where ``ignore_index`` marks pixels left out of both metrics.

    ``miou`` is torchmetrics' ``MulticlassJaccardIndex(average="macro")`` over the whole dataset's confusion
    matrix. In torchmetrics 1.9 the macro average gives weight 0 to the ignore class and to every class absent
    from both the ground truth and the predictions, so such classes do not count as IoU 0; a class that is only
    predicted (never in the ground truth) does count, with IoU 0. This is the usual ``nanmean`` of per-class IoU
    (mmsegmentation and others). ``zero_division`` is left at 0: it never reaches the mean, as only classes with
    an empty union divide by zero. NaN when no labelled pixel was seen. ``pixel_acc`` is ``MulticlassAccuracy``
    with ``average="micro"``: correct pixels over labelled pixels.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, validate_args: bool = True
    ) -> None:
        common = {"num_classes": num_classes, "ignore_index": ignore_index, "validate_args": validate_args}
        super().__init__(
            {
                "miou": MulticlassJaccardIndex(average="macro", **common),
                "pixel_acc": MulticlassAccuracy(average="micro", **common),
            },
            compute_groups=False,
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(_as_class_input(preds), target.long())

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        return super().forward(_as_class_input(preds), target.long())


class ClassificationMetrics(MetricCollection):
    """Top-1 and top-5 accuracy (micro: over samples), ``compute()`` -> ``{"top1", "top5"}``.

    ``update(logits, target)``: ``logits`` (B, C) scores, ``target`` (B,) labels. With fewer than 5 classes,
    ``top5`` is the top-``num_classes`` accuracy (always 1).
    """

    def __init__(self, num_classes: int, validate_args: bool = True) -> None:
        common = {"num_classes": num_classes, "average": "micro", "validate_args": validate_args}
        super().__init__(
            {
                "top1": MulticlassAccuracy(top_k=1, **common),
                "top5": MulticlassAccuracy(top_k=min(5, num_classes), **common),
            },
            compute_groups=False,
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(_as_class_input(logits), target.long())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        return super().forward(_as_class_input(logits), target.long())
