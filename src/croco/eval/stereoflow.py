"""Accuracy metrics of the binocular downstream tasks: stereo disparity, optical flow, relative camera pose.

``torchmetrics`` metrics accumulated over a whole dataset (sum states summed across DDP ranks; the pose errors are
list states concatenated, for the medians), in float32 inputs and float64 sums; bf16 inputs are cast.

Stereo and flow follow the dataset-level metrics of naver/croco ``stereoflow/criterion.py``
(``StereoDatasetMetrics``, ``FlowDatasetMetrics``): every mean is over ALL valid pixels of the dataset together,
and valid means finite ground truth (+inf marks a pixel without ground truth; for flow, both components).
Error rates are in PERCENT, as officially reported. The official Spring special case (ground truth at twice the
prediction's resolution) is not supported: shapes must match.

Keys (identifier-safe: no ``@``, no ``.``, no ``+``; a threshold ``t`` is written ``f"{t:g}"`` with the dot as
``p``, so 0.5 -> ``0p5``):

* :class:`StereoMetrics` (:data:`STEREO_KEYS`): ``avgerr`` (mean |error|, the disparity EPE; official
  ``avgerr`` / ``L1err``), ``rmse``, ``bad0p5``, ``bad1``, ``bad2``, ``bad3`` (% of pixels with |error| > t;
  official ``bad@0.5`` ... ``bad@3.0``).
* :class:`FlowMetrics` (:data:`FLOW_KEYS`): ``epe`` (mean end-point error), ``l1err`` (mean |du| + |dv|),
  ``bad0p5``, ``bad1``, ``bad3``, ``bad5`` (% of pixels with EPE > t), ``epe_s0_10``, ``epe_s10_40``,
  ``epe_s40_inf`` (mean EPE of the pixels whose ground-truth speed |flow| is in [0, 10), [10, 40), [40, inf);
  official ``s0-10``, ``s10-40``, ``s40+``); NaN for an empty bin.
* :class:`PoseMetrics` (:data:`POSE_KEYS`): ``rot_mean``, ``rot_median`` (geodesic rotation error, degrees),
  ``trans_mean``, ``trans_median`` (angle between translation directions, degrees), and for t in 5, 15, 30:
  ``rot_acc{t}``, ``trans_acc{t}``, ``acc{t}`` (% of pairs with rotation error < t, translation error < t,
  and ``max(rotation, translation) < t``, as relative-pose benchmarks report).

Everything is NaN when nothing valid was seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from croco.models.pose import geodesic_angle, translation_angle

__all__ = [
    "FLOW_KEYS",
    "POSE_KEYS",
    "STEREO_KEYS",
    "FlowMetrics",
    "PoseMetrics",
    "StereoMetrics",
    "constant_pose",
    "threshold_key",
]


def constant_pose(rotations: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The best constant relative pose in hindsight for (B, 3, 3) rotations and (B, 3) unit directions: the
    identity rotation and the normalised mean direction, each expanded to the batch."""
    mean = torch.nn.functional.normalize(directions.mean(0), dim=0)
    return torch.eye(3, dtype=rotations.dtype).expand_as(rotations), mean.expand_as(directions)


def threshold_key(prefix: str, threshold: float) -> str:
    """``prefix`` + the threshold written ``f"{t:g}"`` with ``p`` for the dot: ("bad", 0.5) -> "bad0p5"."""
    return prefix + f"{threshold:g}".replace(".", "p")


def _bin_key(low: float, high: float) -> str:
    high_s = "inf" if math.isinf(high) else f"{high:g}".replace(".", "p")
    return f"epe_s{low:g}_{high_s}".replace(".", "p")


STEREO_BAD = (0.5, 1.0, 2.0, 3.0)
FLOW_BAD = (0.5, 1.0, 3.0, 5.0)
FLOW_SPEED_BINS = ((0.0, 10.0), (10.0, 40.0), (40.0, math.inf))
POSE_THRESHOLDS = (5.0, 15.0, 30.0)

STEREO_KEYS = ("avgerr", "rmse", *(threshold_key("bad", t) for t in STEREO_BAD))
FLOW_KEYS = ("epe", "l1err", *(threshold_key("bad", t) for t in FLOW_BAD),
             *(_bin_key(a, b) for a, b in FLOW_SPEED_BINS))  # fmt: skip
POSE_KEYS = ("rot_mean", "rot_median", "trans_mean", "trans_median",
             *(f"{kind}{t:g}" for t in POSE_THRESHOLDS for kind in ("rot_acc", "trans_acc", "acc")))  # fmt: skip
"""Keys of ``compute()`` with the default thresholds."""


class _SumMetric(Metric):
    """Sum states: int64 counts and float64 sums, kept float64 under ``.to(dtype)`` (as ``DepthMetrics``)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def _add_sums(self, counts: Sequence[str], sums: Sequence[str]) -> None:
        self._sum_names = tuple(sums)
        for name in counts:
            self.add_state(name, default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in sums:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> _SumMetric:
        this = super()._apply(fn, *args, **kwargs)
        for name in getattr(this, "_sum_names", ()):
            setattr(this, name, getattr(this, name).double())
            this._defaults[name] = this._defaults[name].double()
        return this


def _prepare(
    pred: torch.Tensor, gt: torch.Tensor, channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred, gt with 0 where invalid, valid (B, H, W)), float32."""
    if gt.ndim != 4 or gt.shape[1] != channels or pred.shape != gt.shape:
        raise ValueError(f"expected prediction and ground truth of shape (B, {channels}, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")  # fmt: skip
    pred, gt = pred.detach().float(), gt.detach().float()
    valid = torch.isfinite(gt).all(dim=1)
    gt = torch.where(valid[:, None], gt, torch.zeros_like(gt))
    return pred, gt, valid


def _total(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum(dtype=torch.float64)


class StereoMetrics(_SumMetric):
    """Disparity errors over all valid pixels; ``update(pred_disp, gt)`` with (B, 1, H, W) tensors, ``gt`` +inf
    where unknown. ``compute()``: ``avgerr``, ``rmse`` and ``bad{t}`` (percent) for ``t`` in ``bad_thresholds``
    (keys in the module docstring)."""

    def __init__(self, bad_thresholds: Sequence[float] = STEREO_BAD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bad_thresholds = tuple(float(t) for t in bad_thresholds)
        self._bad = [threshold_key("bad", t) for t in self.bad_thresholds]
        self._add_sums(["count", *self._bad], ["abs_err", "sq_err"])

    def update(self, pred_disp: torch.Tensor, gt: torch.Tensor) -> None:
        pred, gt, valid = _prepare(pred_disp, gt, 1)
        err = (pred - gt).abs()[:, 0]
        self.count += valid.sum()
        self.abs_err += _total(err, valid)
        self.sq_err += _total(err.square(), valid)
        for key, t in zip(self._bad, self.bad_thresholds):
            setattr(self, key, getattr(self, key) + (valid & (err > t)).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.double()
        out = {"avgerr": self.abs_err / n, "rmse": (self.sq_err / n).sqrt()}
        out.update({k: 100.0 * getattr(self, k).double() / n for k in self._bad})
        return {k: v.float() for k, v in out.items()}


class FlowMetrics(_SumMetric):
    """Optical-flow errors over all valid pixels; ``update(pred_flow, gt)`` with (B, 2, H, W) tensors, ``gt``
    +inf where unknown. ``compute()``: ``epe``, ``l1err``, ``bad{t}`` (percent of pixels with EPE > t) and the
    EPE per ground-truth speed bin (keys in the module docstring)."""

    def __init__(
        self,
        bad_thresholds: Sequence[float] = FLOW_BAD,
        speed_bins: Sequence[tuple[float, float]] = FLOW_SPEED_BINS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bad_thresholds = tuple(float(t) for t in bad_thresholds)
        self.speed_bins = tuple((float(a), float(b)) for a, b in speed_bins)
        self._bad = [threshold_key("bad", t) for t in self.bad_thresholds]
        self._bins = [_bin_key(a, b) for a, b in self.speed_bins]
        self._add_sums(["count", *self._bad, *(f"n_{k}" for k in self._bins)],
                       ["epe", "l1err", *(f"sum_{k}" for k in self._bins)])  # fmt: skip

    def update(self, pred_flow: torch.Tensor, gt: torch.Tensor) -> None:
        pred, gt, valid = _prepare(pred_flow, gt, 2)
        diff = pred - gt
        epe = diff.square().sum(dim=1).sqrt()
        speed = gt.square().sum(dim=1).sqrt()
        self.count += valid.sum()
        self.epe += _total(epe, valid)
        self.l1err += _total(diff.abs().sum(dim=1), valid)
        for key, t in zip(self._bad, self.bad_thresholds):
            setattr(self, key, getattr(self, key) + (valid & (epe > t)).sum())
        for key, (low, high) in zip(self._bins, self.speed_bins):
            in_bin = valid & (speed >= low) & (speed < high)
            setattr(self, f"n_{key}", getattr(self, f"n_{key}") + in_bin.sum())
            setattr(self, f"sum_{key}", getattr(self, f"sum_{key}") + _total(epe, in_bin))

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.double()
        out = {"epe": self.epe / n, "l1err": self.l1err / n}
        out.update({k: 100.0 * getattr(self, k).double() / n for k in self._bad})
        out.update({k: getattr(self, f"sum_{k}") / getattr(self, f"n_{k}").double() for k in self._bins})
        return {k: v.float() for k, v in out.items()}


class PoseMetrics(Metric):
    """Relative-pose errors; ``update(r_pred (B, 3, 3), t_pred (B, 3), r_gt, t_gt)``. Rotation error: the
    geodesic angle (``croco.models.pose.geodesic_angle``); translation error: the angle between the directions
    (``translation_angle``, the scale being unobservable). ``compute()``: means, medians (``torch.quantile`` 0.5:
    the mean of the two middle values for an even count) and accuracies in percent (keys in the module
    docstring). The per-pair errors are kept (list states, concatenated across ranks) for the medians."""

    is_differentiable = False
    higher_is_better = None  # errors lower, accuracies higher
    full_state_update = False

    def __init__(self, thresholds: Sequence[float] = POSE_THRESHOLDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.add_state("rot_err", default=[], dist_reduce_fx="cat")
        self.add_state("trans_err", default=[], dist_reduce_fx="cat")

    def update(
        self, r_pred: torch.Tensor, t_pred: torch.Tensor, r_gt: torch.Tensor, t_gt: torch.Tensor
    ) -> None:
        if r_pred.shape != r_gt.shape or r_pred.shape[-2:] != (3, 3) or r_pred.ndim != 3:
            raise ValueError(
                f"expected (B, 3, 3) rotations, got {tuple(r_pred.shape)} and {tuple(r_gt.shape)}"
            )
        if t_pred.shape != t_gt.shape or t_pred.shape != (r_pred.shape[0], 3):
            raise ValueError(
                f"expected (B, 3) translations, got {tuple(t_pred.shape)} and {tuple(t_gt.shape)}"
            )
        self.rot_err.append(geodesic_angle(r_pred.detach().double(), r_gt.detach().double()))
        self.trans_err.append(translation_angle(t_pred.detach().double(), t_gt.detach().double()))

    def compute(self) -> dict[str, torch.Tensor]:
        rot, trans = self._errors()
        out: dict[str, torch.Tensor] = {}
        for name, err in (("rot", rot), ("trans", trans)):
            empty = err.numel() == 0
            out[f"{name}_mean"] = err.new_tensor(math.nan) if empty else err.mean()
            out[f"{name}_median"] = err.new_tensor(math.nan) if empty else torch.quantile(err, 0.5)
        both = torch.maximum(rot, trans)
        for t in self.thresholds:
            for name, err in (("rot_acc", rot), ("trans_acc", trans), ("acc", both)):
                out[f"{name}{t:g}".replace(".", "p")] = 100.0 * (err < t).double().mean()
        return {k: v.float() for k, v in out.items()}

    def _errors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.rot_err, list) and not self.rot_err:
            empty = torch.zeros(0, dtype=torch.float64, device=self.device)
            return empty, empty
        return dim_zero_cat(self.rot_err).double(), dim_zero_cat(self.trans_err).double()
