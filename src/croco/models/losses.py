"""Depth regression losses for the monocular depth downstream task.

The depth head predicts LOG depth: its raw output ``pred`` is ``log(depth / 1 m)``, and the task turns it into
metres with :func:`depth_from_prediction` (``exp``). Predicting the log keeps depth positive without a clamp and
makes the losses below, which compare logs, act on the raw output directly.

Every loss is an ``nn.Module`` called as ``loss(pred, target, valid)`` with ``pred`` (B, 1, H, W) raw network
output (log depth), ``target`` (B, 1, H, W) ground-truth depth in metres and ``valid`` a bool mask of the same
shape (ground truth present: ``target > 0`` and finite). The caller computes ``valid``; the losses also drop
pixels whose target is not positive and finite, so a bad pixel can never produce a NaN. Predictions are not
masked for finiteness: a diverging network must show up in the loss. Losses are computed in float32 whatever the
input dtype (bf16 autocast included), and return 0, with a graph, when no pixel is valid.

* :class:`SILogLoss`: the scale-invariant log loss of Eigen, Puhrsch & Fergus, "Depth Map Prediction from a
  Single Image using a Multi-Scale Deep Network" (NeurIPS 2014), in the form used by BTS (Lee et al. 2019),
  AdaBins (Bhat et al. 2021) and MultiMAE (Bachmann et al. 2022):
  ``scale * sqrt(mean(d^2) - variance_focus * mean(d)^2)`` with ``d = log pred_depth - log target``.
* :class:`LogL1Loss`: ``mean |log pred_depth - log target|``.

Means are taken over all valid pixels of the batch together (not per image, then averaged), as BTS and AdaBins
do. ``build_depth_loss("silog")`` builds one by name from :data:`DEPTH_LOSSES`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "DEPTH_LOSSES",
    "LogL1Loss",
    "SILogLoss",
    "build_depth_loss",
    "depth_from_prediction",
    "prediction_from_depth",
]


def depth_from_prediction(pred: torch.Tensor) -> torch.Tensor:
    """Depth in metres from the depth head's raw output (log depth): ``exp(pred)``, in float32."""
    return pred.float().exp()


def prediction_from_depth(depth: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`depth_from_prediction`: ``log(depth)``, in float32 (depth must be > 0)."""
    return depth.float().log()


def _log_residuals(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``d = pred - log(target)`` in float32, zero outside the usable pixels; the mask and its count (float).

    Usable: ``valid`` (all pixels when None) and ``target`` positive and finite. Masking with ``torch.where``
    (no boolean indexing) keeps the step free of host-device syncs and the log away from invalid targets.
    """
    if pred.shape != target.shape or (valid is not None and valid.shape != pred.shape):
        shapes = f"pred {tuple(pred.shape)}, target {tuple(target.shape)}"
        if valid is not None:
            shapes += f", valid {tuple(valid.shape)}"
        raise ValueError(f"depth loss inputs must have the same shape, got {shapes}")
    pred, target = pred.float(), target.float()
    mask = torch.isfinite(target) & (target > 0)
    if valid is not None:
        mask = mask & valid.bool()
    log_target = torch.where(mask, target, torch.ones_like(target)).log()
    d = torch.where(mask, pred - log_target, torch.zeros_like(pred))
    return d, mask, mask.sum().float()


def _zero_if_empty(loss: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``loss`` when some pixel was valid, else 0 (still attached to the graph; no host sync)."""
    return torch.where(count > 0, loss, torch.zeros_like(loss))


class SILogLoss(nn.Module):
    """Scale-invariant log loss (Eigen et al., NeurIPS 2014), as in BTS / AdaBins / MultiMAE.

    ``loss = scale * sqrt(mean(d^2) - variance_focus * mean(d)^2)``, ``d = pred - log(target)`` (``pred`` is log
    depth), means over all valid pixels of the batch together. ``variance_focus = 1`` makes the loss invariant to
    a global scale of the predicted depth (``pred + c``); BTS uses 0.85 and ``scale = 10``. The radicand is
    clamped at 0 and ``eps`` is added under the square root so the value and its gradient stay finite when the
    residuals are (nearly) constant.
    """

    def __init__(self, variance_focus: float = 0.85, scale: float = 10.0, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= variance_focus <= 1.0:
            raise ValueError(f"variance_focus must be in [0, 1], got {variance_focus}")
        self.variance_focus = variance_focus
        self.scale = scale
        self.eps = eps

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        d, _, count = _log_residuals(pred, target, valid)
        n = count.clamp(min=1.0)
        mean_d = d.sum() / n
        mean_d2 = (d * d).sum() / n
        radicand = (mean_d2 - self.variance_focus * mean_d * mean_d).clamp(min=0.0)
        return _zero_if_empty(self.scale * torch.sqrt(radicand + self.eps), count)

    def extra_repr(self) -> str:
        return f"variance_focus={self.variance_focus}, scale={self.scale}, eps={self.eps}"


class LogL1Loss(nn.Module):
    """Mean absolute log-depth error, ``mean |pred - log(target)|`` over all valid pixels of the batch."""

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        d, _, count = _log_residuals(pred, target, valid)
        return _zero_if_empty(d.abs().sum() / count.clamp(min=1.0), count)


DEPTH_LOSSES: dict[str, type[nn.Module]] = {"silog": SILogLoss, "log_l1": LogL1Loss}


def build_depth_loss(name: str, **kwargs: Any) -> nn.Module:
    """The depth loss registered as ``name`` in :data:`DEPTH_LOSSES`, built with ``kwargs``."""
    if name not in DEPTH_LOSSES:
        raise ValueError(f"unknown depth loss {name!r}; allowed: {', '.join(sorted(DEPTH_LOSSES))}")
    return DEPTH_LOSSES[name](**kwargs)
