"""Relative camera pose from two views: the binocular CroCo network (encoder + decoder, no masking) with a
pose head on the last decoder tokens of image 1 (``croco.models.pose.RelativePoseHead``).

The head predicts the rotation of camera 2 in camera 1's frame (6-D continuous parameterisation of Zhou et al.,
CVPR 2019, or a quaternion) and the direction of its translation (the scale is unobservable from two images).
Loss: chordal rotation distance + (1 - cosine) of the directions (``PoseLoss``). Metrics: mean and median
geodesic rotation error and translation angle, accuracy at 5/15/30 degrees (``croco.eval.stereoflow.PoseMetrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from croco.data.transforms import denormalize
from croco.eval.stereoflow import PoseMetrics
from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.pose import PoseLoss, RelativePoseHead, geodesic_angle, split_pose, translation_angle
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel

__all__ = ["PoseTask"]


class PoseTask(FinetuneTask):
    """Args: as ``FinetuneTask``; ``head``: ``RelativePoseHead`` arguments (``param``: 6d or quat, ``hidden``);
    ``rot_weight`` / ``trans_weight``: the two loss terms."""

    panel_caption = "image 1 | image 2, with the rotation and translation-direction errors of the prediction"

    def __init__(
        self,
        model: Mapping[str, Any],
        head: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        rot_weight: float = 1.0,
        trans_weight: float = 1.0,
    ):
        super().__init__(model, head, finetune, optim, compile)
        self.save_hyperparameters(
            {"model": dict(model), "head": dict(head or {}), "finetune": self.settings, "optim": self.recipe.to_dict(),
             "compile": bool(compile), "rot_weight": float(rot_weight), "trans_weight": float(trans_weight)},
            logger=False,
        )  # fmt: skip
        self.criterion = PoseLoss(rot_weight, trans_weight)
        self.val_metrics, self.test_metrics = PoseMetrics(), PoseMetrics()

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> CroCoDownstreamBinocular:
        return CroCoDownstreamBinocular(RelativePoseHead(**head), **model)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotation (B, 3, 3), unit translation direction (B, 3)) of camera 2 in camera 1's frame."""
        return split_pose(self.net(img1, img2), self.net.head.param)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        rotation, direction = self(batch["img1"], batch["img2"])
        loss = self.criterion(rotation, direction, batch["rotation"], batch["translation"])
        return loss, (rotation, direction)

    def update_metrics(self, metrics: PoseMetrics, batch: Mapping[str, Any], output: Any) -> None:
        metrics.update(*output, batch["rotation"], batch["translation"])

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        with self.evaluating():
            rotation, direction = self(samples["img1"], samples["img2"])
        rot_err = geodesic_angle(rotation, samples["rotation"].float())
        trans_err = translation_angle(direction, samples["translation"].float())
        true_angle = geodesic_angle(torch.eye(3).expand_as(rotation), samples["rotation"].float())
        captions = [f"rotation {float(t):.1f} deg, error {float(r):.1f} deg; direction error {float(d):.1f} deg"
                    for t, r, d in zip(true_angle, rot_err, trans_err)]  # fmt: skip
        views = {"image 1": denormalize(samples["img1"].float()).cpu(),
                 "image 2": denormalize(samples["img2"].float()).cpu()}  # fmt: skip
        return render_panel(views, tuple(views), captions=captions)
