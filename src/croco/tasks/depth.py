"""Monocular depth estimation: a DPT head on the CroCo encoder (the paper's NYUv2 fine-tuning task).

The head predicts log depth (one channel, full resolution), trained with the scale-invariant log loss
(``silog``, Eigen et al., NeurIPS 2014) or an L1 loss on log depth (``log_l1``) over pixels with ground truth in
``(min_depth, max_depth]``. Validation and test report the NYU protocol (``croco.eval.dense.DepthMetrics``):
δ < 1.25, 1.25², 1.25³, AbsRel, RMSE and log10, with predictions clamped to ``[min_depth, max_depth]`` and the
optional Eigen crop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from croco.data.transforms import denormalize
from croco.eval.dense import DepthMetrics
from croco.models.downstream import CroCoDownstreamMonocularEncoder
from croco.models.dpt import PixelwiseTaskWithDPT
from croco.models.losses import build_depth_loss, depth_from_prediction
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel
from croco.utils.colors import colorize

__all__ = ["DepthTask"]


class DepthTask(FinetuneTask):
    """Args: ``model``, ``head``, ``finetune``, ``optim``, ``compile`` as ``FinetuneTask``; ``loss``: silog or
    log_l1; ``min_depth``/``max_depth`` (metres): the range with ground truth, for loss and metrics;
    ``eigen_crop``: evaluate inside the Eigen crop of NYUv2."""

    panel_caption = "input | predicted depth | true depth (same colour scale per row; black: no ground truth)"

    def __init__(
        self,
        model: Mapping[str, Any],
        head: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        loss: str = "silog",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eigen_crop: bool = False,
    ):
        super().__init__(model, head, finetune, optim, compile)
        if not 0 < min_depth < max_depth:
            raise ValueError(f"min_depth={min_depth}, max_depth={max_depth}: expected 0 < min_depth < max_depth")
        self.save_hyperparameters(
            {"model": dict(model), "head": dict(head or {}), "finetune": self.settings, "optim": self.recipe.to_dict(),
             "compile": bool(compile), "loss": loss, "min_depth": float(min_depth), "max_depth": float(max_depth),
             "eigen_crop": bool(eigen_crop)}, logger=False,
        )  # fmt: skip
        self.criterion = build_depth_loss(loss)
        options = {"min_depth": min_depth, "max_depth": max_depth, "eigen_crop": eigen_crop}
        self.val_metrics = DepthMetrics(**options)
        self.test_metrics = DepthMetrics(**options)

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> CroCoDownstreamMonocularEncoder:
        return CroCoDownstreamMonocularEncoder(PixelwiseTaskWithDPT(**{**head, "num_channels": 1}), **model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Metric depth (B, 1, H, W) of ImageNet-normalised images."""
        return depth_from_prediction(self.net(image))

    def _valid(self, depth: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(depth) & (depth > self.hparams.min_depth) & (depth <= self.hparams.max_depth)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.net(batch["image"]).float()
        target = batch["depth"]
        return self.criterion(pred, target, self._valid(target)), pred

    def update_metrics(self, metrics: DepthMetrics, batch: Mapping[str, Any], output: torch.Tensor) -> None:
        metrics.update(depth_from_prediction(output), batch["depth"])

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        with self.evaluating():
            pred = self(samples["image"]).float()
        truth = samples["depth"].float()
        valid = self._valid(truth)
        lo = torch.stack([t[v].min() if v.any() else t.new_tensor(0.0) for t, v in zip(truth, valid)])
        hi = torch.stack([t[v].max() if v.any() else t.new_tensor(1.0) for t, v in zip(truth, valid)])
        views = {
            "input": denormalize(samples["image"].float()).cpu(),
            "predicted depth": colorize(pred, lo, hi),
            "true depth": colorize(truth, lo, hi, valid=valid),
        }
        return render_panel(views, tuple(views), title="Depth: magma colour map, near = dark, far = bright.")
