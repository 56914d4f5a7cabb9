"""Semantic segmentation: a DPT head with one channel per class on the CroCo encoder (the paper's ADE20k task).

Cross-entropy over pixels whose label is not ``IGNORE_INDEX``; validation and test report mIoU and pixel
accuracy (``croco.eval.dense.SegmentationMetrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from croco.data.dense import IGNORE_INDEX
from croco.data.transforms import denormalize
from croco.eval.dense import SegmentationMetrics
from croco.models.downstream import CroCoDownstreamMonocularEncoder
from croco.models.dpt import PixelwiseTaskWithDPT
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel
from croco.utils.colors import colorize_labels

__all__ = ["SegmentationTask"]


class SegmentationTask(FinetuneTask):
    """Args: as ``FinetuneTask``, plus ``num_classes`` (the head's channels; must equal the data's) and
    ``label_smoothing`` of the cross-entropy."""

    panel_caption = "input | predicted classes | true classes (black: ignored)"

    def __init__(
        self,
        model: Mapping[str, Any],
        num_classes: int,
        head: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        label_smoothing: float = 0.0,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: expected an integer >= 2")
        self.num_classes = num_classes
        super().__init__(model, head, finetune, optim, compile)
        self.save_hyperparameters(
            {"model": dict(model), "num_classes": num_classes, "head": dict(head or {}), "finetune": self.settings,
             "optim": self.recipe.to_dict(), "compile": bool(compile), "label_smoothing": float(label_smoothing)},
            logger=False,
        )  # fmt: skip
        self.val_metrics = SegmentationMetrics(num_classes)
        self.test_metrics = SegmentationMetrics(num_classes)

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> CroCoDownstreamMonocularEncoder:
        return CroCoDownstreamMonocularEncoder(PixelwiseTaskWithDPT(**{**head, "num_channels": self.num_classes}),
                                               **model)  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes, H, W)."""
        return self.net(image)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(batch["image"]).float()
        target = batch["segmentation"]
        if not bool((target != IGNORE_INDEX).any()):  # a batch without labels: zero loss, graph intact
            return logits.sum() * 0.0, logits
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.hparams.label_smoothing)  # fmt: skip
        return loss, logits

    def update_metrics(self, metrics: SegmentationMetrics, batch: Mapping[str, Any], output: torch.Tensor) -> None:
        metrics.update(output, batch["segmentation"])

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        with self.evaluating():
            pred = self(samples["image"]).argmax(dim=1)
        views = {
            "input": denormalize(samples["image"].float()).cpu(),
            "predicted classes": colorize_labels(pred, self.num_classes),
            "true classes": colorize_labels(samples["segmentation"], self.num_classes, IGNORE_INDEX),
        }
        return render_panel(views, tuple(views))
