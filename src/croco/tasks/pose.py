"""Relative camera pose from two views: the binocular CroCo network (encoder + decoder, no masking) with a
pose head on the last decoder tokens of image 1 (``croco.models.pose.RelativePoseHead``).

The head predicts the rotation of camera 2 in camera 1's frame (6-D continuous parameterisation of Zhou et al.,
CVPR 2019, or a quaternion) and the direction of its translation (the scale is unobservable from two images).
Loss: chordal rotation distance + (1 - cosine) of the directions (``PoseLoss``). Metrics: mean and median
geodesic rotation error and translation angle, accuracy at 5/15/30 degrees (``croco.eval.stereoflow.PoseMetrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from croco.data.transforms import denormalize
from croco.eval.stereoflow import PoseMetrics, constant_pose
from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.pose import (
    PoseLoss,
    RelativePoseHead,
    geodesic_angle,
    rotation_vector,
    split_pose,
    translation_angle,
)
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel

__all__ = ["PoseTask", "plot_pose"]


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


def plot_pose(task: PoseTask, batches: Iterable[Mapping[str, Any]], out: str | Path, title: str = "") -> Path:
    """A figure of the task's predictions on ``batches``: predicted against true rotation about the camera's
    vertical axis (the turn of a camera that looks around a room, OpenCV axes: y down), and the distribution of
    the rotation and translation-direction errors against the identity rotation and the mean direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from croco.utils.runs import save_figure

    predicted, true, directions, true_directions = [], [], [], []
    with task.evaluating(), torch.no_grad():
        for batch in batches:
            device = task.device
            rotation, direction = task(batch["img1"].to(device), batch["img2"].to(device))
            predicted.append(rotation.cpu().double())
            directions.append(direction.cpu().double())
            true.append(batch["rotation"].double())
            true_directions.append(batch["translation"].double())
    r_pred, r_gt = torch.cat(predicted), torch.cat(true)
    t_pred, t_gt = torch.cat(directions), torch.cat(true_directions)
    r_const, t_const = constant_pose(r_gt, t_gt)
    errors = {
        "rotation": (geodesic_angle(r_pred, r_gt), geodesic_angle(r_const, r_gt)),
        "translation direction": (translation_angle(t_pred, t_gt), translation_angle(t_const, t_gt)),
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    yaw_gt, yaw_pred = rotation_vector(r_gt)[:, 1], rotation_vector(r_pred)[:, 1]
    limit = float(max(yaw_gt.abs().max(), yaw_pred.abs().max())) * 1.05
    axes[0].plot([-limit, limit], [-limit, limit], color="grey", lw=0.8, label="perfect")
    axes[0].axhline(0.0, color="tab:red", lw=0.8, ls="--", label="identity")
    axes[0].scatter(yaw_gt, yaw_pred, s=10, alpha=0.7, label="predicted")
    axes[0].set(xlabel="true rotation about the vertical axis (deg)", ylabel="predicted (deg)",
                xlim=(-limit, limit), ylim=(-limit, limit))  # fmt: skip
    axes[0].legend(loc="upper left", fontsize=8)
    for ax, (name, (ours, baseline)) in zip(axes[1:], errors.items()):
        bins = torch.linspace(0, 180, 37).tolist()
        label = "identity" if name == "rotation" else "mean direction"
        ax.hist(baseline.numpy(), bins=bins, alpha=0.5, color="tab:red",
                label=f"{label}: mean {float(baseline.mean()):.1f}, median {float(baseline.median()):.1f}")  # fmt: skip
        ax.hist(ours.numpy(), bins=bins, alpha=0.6, color="tab:blue",
                label=f"predicted: mean {float(ours.mean()):.1f}, median {float(ours.median()):.1f}")  # fmt: skip
        ax.set(xlabel=f"{name} error (deg)", ylabel="pairs")
        ax.legend(fontsize=8)
    fig.suptitle(title or f"relative pose on {len(r_gt)} pairs")
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path
