"""Losses of the binocular dense tasks: CroCo-Stereo (disparity) and CroCo-Flow (optical flow).

The official losses of naver/croco ``stereoflow/criterion.py`` (CroCo v2, Weinzaepfel et al., ICCV 2023), same
formulas and defaults:

* :class:`L1Loss`: ``mean |gt - pred|`` over the valid entries, no confidence.
* :class:`LaplacianLoss` (CroCo-Stereo on ETH3D): ``mean( sum_c |gt - pred| / exp(conf) + conf )``, the
  negative log-likelihood of a Laplacian of scale ``exp(conf)`` (up to the constant ``log 2``).
* :class:`LaplacianLossBounded` (CroCo-Flow): scale ``s = (b - a) * sigmoid(conf) + a`` in ``(a, b)``,
  ``mean( sum_c |gt - pred| / s + log s )``; by default pixels whose ground-truth norm reaches 10000 are dropped.
* :class:`LaplacianLossBounded2` (CroCo-Stereo but ETH3D): log-scale ``conf' = 2a (sigmoid(conf / b) - 0.5)``
  in ``(-a, a)``, ``mean( sum_c |gt - pred| / exp(conf') + conf' )``.

Call convention: ``loss(pred, gt)`` with ``gt`` (B, C, H, W), C = 1 (disparity) or 2 (flow), +inf where there is
no ground truth (the official convention), and ``pred`` the raw head output (B, C + 1, H, W): the first C
channels are the disparity or flow, the last one the raw confidence ``conf`` (:func:`split_prediction_conf`).
:class:`L1Loss` also accepts a (B, C, H, W) prediction and ignores a confidence channel.

Valid pixels: every channel of ``gt`` finite (for flow both components; the official code only looks at the
first one, which is the same under the +inf convention), and, when ``max_gtnorm`` is set, ground-truth "norm"
below it (the official ``_get_gtnorm``: the disparity itself for stereo, the L2 norm for flow). Means are over
all valid pixels of the batch together, as the official boolean-indexed ``.mean()``. Where the official code
returns NaN (no valid pixel), these return 0, still attached to the graph. Masking uses ``torch.where`` (no
boolean indexing, no host sync); losses are computed in float32 whatever the input dtype.

Sign of the confidence: in all three Laplacian forms the error is divided by a scale that INCREASES with the
raw ``conf``, so a higher raw ``conf`` means a larger expected error, i.e. more uncertainty (the name is the
official one). :func:`confidence_from_raw` gives that scale: the Laplacian scale in disparity/flow units (the
expected ``sum_c |gt - pred|`` of the pixel), to visualise or compare uncertainties.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "STEREOFLOW_LOSSES",
    "L1Loss",
    "LaplacianLoss",
    "LaplacianLossBounded",
    "LaplacianLossBounded2",
    "build_stereoflow_loss",
    "confidence_from_raw",
    "gt_norm",
    "split_prediction_conf",
    "valid_mask",
]


def split_prediction_conf(pred: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction (B, C, H, W), raw confidence (B, 1, H, W) or None) from a head output with ``channels`` (C)
    or ``channels + 1`` channels (the official ``split_prediction_conf``)."""
    if pred.ndim != 4 or pred.shape[1] not in (channels, channels + 1):
        raise ValueError(f"expected a (B, {channels}[+1], H, W) prediction, got {tuple(pred.shape)}")
    if pred.shape[1] == channels:
        return pred, None
    return pred[:, :channels], pred[:, channels:]


def gt_norm(gt: torch.Tensor) -> torch.Tensor:
    """The official ``_get_gtnorm``: the disparity itself (not its absolute value) for C = 1, the L2 norm of the
    flow for C = 2; (B, 1, H, W)."""
    if gt.shape[1] == 1:
        return gt
    return gt.square().sum(dim=1, keepdim=True).sqrt()


def valid_mask(gt: torch.Tensor, max_gtnorm: float | None = None) -> torch.Tensor:
    """Bool (B, 1, H, W): every channel of ``gt`` finite and, if given, :func:`gt_norm` below ``max_gtnorm``."""
    mask = torch.isfinite(gt).all(dim=1, keepdim=True)
    if max_gtnorm is not None:
        mask = mask & (gt_norm(torch.where(mask, gt, torch.zeros_like(gt))) < max_gtnorm)
    return mask


def _inputs(
    pred: torch.Tensor, gt: torch.Tensor, max_gtnorm: float | None, need_conf: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|gt - pred| (B, C, H, W) zero outside the mask, raw conf (B, 1, H, W) or None, mask (B, 1, H, W),
    valid count (float), gt with zeros outside the mask), all float32."""
    if gt.ndim != 4 or gt.shape[1] not in (1, 2):
        raise ValueError(f"expected a (B, 1|2, H, W) ground truth, got {tuple(gt.shape)}")
    channels = gt.shape[1]
    value, conf = split_prediction_conf(pred, channels)
    if value.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} does not match ground truth {tuple(gt.shape)}")
    if need_conf and conf is None:
        raise ValueError(
            f"this loss needs a confidence channel: expected {channels + 1} channels, got {channels}"
        )
    gt = gt.float()
    mask = valid_mask(gt, max_gtnorm)
    gt = torch.where(mask, gt, torch.zeros_like(gt))
    err = torch.where(mask, (gt - value.float()).abs(), torch.zeros_like(gt))
    return err, None if conf is None else conf.float(), mask, mask.sum().float(), gt


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (with a graph) when the mask is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return torch.where(count > 0, total / count.clamp(min=1.0), total * 0.0)


class L1Loss(nn.Module):
    """Mean absolute error over the valid entries (official ``L1Loss``); a confidence channel is ignored."""

    with_conf = False

    def __init__(self, max_gtnorm: float | None = None):
        super().__init__()
        self.max_gtnorm = max_gtnorm

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        err, _, mask, count, _ = _inputs(pred, gt, self.max_gtnorm, need_conf=False)
        mask = mask.expand_as(err)
        return _masked_mean(err, mask, count * err.shape[1])

    def extra_repr(self) -> str:
        return f"max_gtnorm={self.max_gtnorm}"


class _Laplacian(nn.Module):
    """Shared part of the Laplacian losses: ``mean( sum_c |e| / scale + log scale )``."""

    with_conf = True

    def __init__(self, max_gtnorm: float | None = None):
        super().__init__()
        self.max_gtnorm = max_gtnorm

    def log_scale(self, conf: torch.Tensor) -> torch.Tensor:
        """The log of the Laplacian scale the loss divides the error by, from the raw confidence."""
        raise NotImplementedError

    def scale(self, conf: torch.Tensor) -> torch.Tensor:
        """The Laplacian scale (expected ``sum_c |gt - pred|``) from the raw confidence; increases with it."""
        return self.log_scale(conf.float()).exp()

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        err, conf, mask, count, _ = _inputs(pred, gt, self.max_gtnorm, need_conf=True)
        assert conf is not None
        log_s = self.log_scale(torch.where(mask, conf, torch.zeros_like(conf)))
        nll = err.sum(dim=1, keepdim=True) * torch.exp(-log_s) + log_s
        return _masked_mean(nll, mask, count)


class LaplacianLoss(_Laplacian):
    """Official ``LaplacianLoss`` (CroCo-Stereo on ETH3D): scale ``exp(conf)``, unbounded."""

    def log_scale(self, conf: torch.Tensor) -> torch.Tensor:
        return conf

    def extra_repr(self) -> str:
        return f"max_gtnorm={self.max_gtnorm}"


class LaplacianLossBounded(_Laplacian):
    """Official ``LaplacianLossBounded`` (CroCo-Flow): scale ``(b - a) * sigmoid(conf) + a`` in ``(a, b)``.

    The paper's equation has ``a = 1 / b``; ``max_gtnorm`` (10000 by default, as officially) drops pixels with
    a huge ground truth."""

    def __init__(self, max_gtnorm: float | None = 10000.0, a: float = 0.25, b: float = 4.0):
        super().__init__(max_gtnorm)
        if not 0 < a < b:
            raise ValueError(f"LaplacianLossBounded needs 0 < a < b, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def log_scale(self, conf: torch.Tensor) -> torch.Tensor:
        return ((self.b - self.a) * torch.sigmoid(conf) + self.a).log()

    def extra_repr(self) -> str:
        return f"max_gtnorm={self.max_gtnorm}, a={self.a}, b={self.b}"


class LaplacianLossBounded2(_Laplacian):
    """Official ``LaplacianLossBounded2`` (CroCo-Stereo): log-scale ``2a (sigmoid(conf / b) - 0.5)`` in
    ``(-a, a)`` (the paper's equation has ``a = b``)."""

    def __init__(self, max_gtnorm: float | None = None, a: float = 3.0, b: float = 3.0):
        super().__init__(max_gtnorm)
        if a <= 0 or b <= 0:
            raise ValueError(f"LaplacianLossBounded2 needs a, b > 0, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def log_scale(self, conf: torch.Tensor) -> torch.Tensor:
        return 2 * self.a * (torch.sigmoid(conf / self.b) - 0.5)

    def extra_repr(self) -> str:
        return f"max_gtnorm={self.max_gtnorm}, a={self.a}, b={self.b}"


STEREOFLOW_LOSSES: dict[str, type[nn.Module]] = {
    "l1": L1Loss,
    "laplacian": LaplacianLoss,
    "laplacian_bounded": LaplacianLossBounded,
    "laplacian_bounded2": LaplacianLossBounded2,
}


def build_stereoflow_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss registered as ``name`` in :data:`STEREOFLOW_LOSSES`, built with ``kwargs``."""
    if name not in STEREOFLOW_LOSSES:
        raise ValueError(
            f"unknown stereo/flow loss {name!r}; allowed: {', '.join(sorted(STEREOFLOW_LOSSES))}"
        )
    return STEREOFLOW_LOSSES[name](**kwargs)


def confidence_from_raw(name: str, conf: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The Laplacian scale that loss ``name`` (built with ``kwargs``: ``a``, ``b``) assigns to the raw
    confidence ``conf``: ``exp(conf)`` ("laplacian"), ``(b - a) sigmoid(conf) + a`` ("laplacian_bounded"),
    ``exp(2a (sigmoid(conf / b) - 0.5))`` ("laplacian_bounded2"); float32, same shape. It is the expected
    ``sum_c |gt - pred|`` of the pixel, in pixels: larger means LESS confident. "l1" has no confidence."""
    loss = build_stereoflow_loss(name, **kwargs)
    if not loss.with_conf:
        raise ValueError(f"loss {name!r} has no confidence; use one of laplacian, laplacian_bounded(2)")
    return loss.scale(conf)  # type: ignore[operator]
