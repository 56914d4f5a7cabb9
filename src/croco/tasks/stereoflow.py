"""Stereo matching and optical flow: CroCo-Stereo and CroCo-Flow (CroCo v2, ICCV 2023).

The whole binocular network (encoder + decoder, no masking) is fine-tuned with a DPT head that outputs the
disparity (1 channel) or the flow (2 channels) plus a confidence channel, trained with the official Laplacian
losses (naver/croco ``stereoflow/criterion.py``; ``croco.models.stereoflow_losses``). Validation predicts every
image tile by tile at the training crop size with confidence-weighted blending (``croco.models.tiling``), as the
official ``stereoflow/engine.py`` does, so validation images may be larger than the crops. Metrics: stereo
avgerr (EPE), RMSE, bad@0.5/1/2/3; flow EPE, bad@0.5/1/3/5 and EPE by speed (``croco.eval.stereoflow``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from croco.data.transforms import denormalize
from croco.eval.stereoflow import FlowMetrics, StereoMetrics
from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.dpt import PixelwiseTaskWithDPT
from croco.models.stereoflow_losses import build_stereoflow_loss
from croco.models.tiling import parse_conf_mode, tiled_pred
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel
from croco.utils.colors import colorize, flow_to_color
from croco.utils.sizes import as_hw

__all__ = ["KINDS", "StereoFlowTask"]

KINDS: dict[str, dict[str, Any]] = {
    "stereo": {"key": "disparity", "channels": 1, "loss": "laplacian_bounded2", "conf_mode": "conf_expsigmoid_15_3"},
    "flow": {"key": "flow", "channels": 2, "loss": "laplacian_bounded", "conf_mode": "conf_expsigmoid_10_5"},
}
"""Per task: the batch key of the ground truth, its channels, and the official loss and tiling weights."""


class StereoFlowTask(FinetuneTask):
    """Args: as ``FinetuneTask``; ``kind``: stereo or flow; ``loss``: a ``STEREOFLOW_LOSSES`` name (null: the
    official one of the kind); ``tile_overlap`` and ``conf_mode`` (null: official) of tiled validation. The model
    preset's ``img_size`` is the training crop, the tile size of inference."""

    def __init__(
        self,
        model: Mapping[str, Any],
        kind: str,
        head: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        loss: str | None = None,
        tile_overlap: float = 0.7,
        conf_mode: str | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        spec = KINDS[kind]
        self.channels = spec["channels"]
        super().__init__(model, head, finetune, optim, compile)
        loss = loss or spec["loss"]
        conf_mode = conf_mode or spec["conf_mode"]
        parse_conf_mode(conf_mode)
        if not 0.0 <= tile_overlap < 1.0:
            raise ValueError(f"tile_overlap={tile_overlap}: expected a fraction in [0, 1)")
        self.save_hyperparameters(
            {"model": dict(model), "kind": kind, "head": dict(head or {}), "finetune": self.settings,
             "optim": self.recipe.to_dict(), "compile": bool(compile), "loss": loss,
             "tile_overlap": float(tile_overlap), "conf_mode": conf_mode}, logger=False,
        )  # fmt: skip
        self.criterion = build_stereoflow_loss(loss)
        metrics = StereoMetrics if kind == "stereo" else FlowMetrics
        self.val_metrics, self.test_metrics = metrics(), metrics()
        self.window = as_hw(model.get("img_size", 224), "model.img_size")

    @property
    def panel_caption(self) -> str:
        what = "disparity (magma, near = bright)" if self.kind == "stereo" else "flow (Middlebury colour wheel)"
        return f"image 1 | image 2 | predicted {what} | true {KINDS[self.kind]['key']} | uncertainty (bright = unsure)"

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> CroCoDownstreamBinocular:
        head = {**head, "num_channels": self.channels + 1}  # + the confidence channel
        return CroCoDownstreamBinocular(PixelwiseTaskWithDPT(**head), **model)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction (B, C, H, W), raw confidence (B, 1, H, W)) of a normalised image pair of any size,
        predicted tile by tile at the training crop size."""
        return tiled_pred(lambda a, b: self.net(a, b), img1, img2, window=self.window,
                          overlap=self.hparams.tile_overlap, conf_mode=self.hparams.conf_mode,
                          channels=self.channels)  # fmt: skip

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Training crops (the network's size) go through the network directly; larger evaluation images are
        predicted tile by tile. The output is the prediction with its confidence channel last."""
        if tuple(batch["img1"].shape[-2:]) == self.window:
            out = self.net(batch["img1"], batch["img2"]).float()
        else:
            out = torch.cat(self(batch["img1"], batch["img2"]), dim=1)
        return self.criterion(out, batch[KINDS[self.kind]["key"]]), out

    def update_metrics(self, metrics: Any, batch: Mapping[str, Any], output: torch.Tensor) -> None:
        metrics.update(output[:, : self.channels], batch[KINDS[self.kind]["key"]])

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        with self.evaluating():
            pred, conf = self(samples["img1"], samples["img2"])
        truth = samples[KINDS[self.kind]["key"]].float()
        if self.kind == "stereo":
            valid = torch.isfinite(truth)
            lo = torch.stack([t[v].min() if v.any() else t.new_tensor(0.0) for t, v in zip(truth, valid)])
            hi = torch.stack([t[v].max() if v.any() else t.new_tensor(1.0) for t, v in zip(truth, valid)])
            shown_pred, shown_truth = colorize(pred, lo, hi), colorize(truth, lo, hi, valid=valid)
        else:
            valid = torch.isfinite(truth).all(dim=1)
            peak = torch.stack([torch.linalg.vector_norm(t, dim=0)[v].max() if v.any() else t.new_tensor(1.0)
                                for t, v in zip(truth, valid)])  # fmt: skip
            shown_pred, shown_truth = flow_to_color(pred, peak), flow_to_color(truth, peak)
        views = {
            "image 1": denormalize(samples["img1"].float()).cpu(),
            "image 2": denormalize(samples["img2"].float()).cpu(),
            f"predicted {KINDS[self.kind]['key']}": shown_pred,
            f"true {KINDS[self.kind]['key']}": shown_truth,
            "uncertainty": colorize(conf, cmap="gray"),
        }
        return render_panel(views, tuple(views))
