"""Image classification on the CroCo encoder: MAE's linear-probe protocol, or full fine-tuning.

The head (``croco.models.downstream.LinearProbeHead``) mean-pools the encoder's last (normalised) tokens and
applies BatchNorm without affine parameters and a linear layer. Linear probing freezes the whole backbone
(``finetune.freeze=backbone``, which also keeps it in eval mode); fine-tuning trains everything. Validation and
test report top-1 and top-5 accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from croco.data.transforms import denormalize
from croco.eval.dense import ClassificationMetrics
from croco.models.downstream import CroCoDownstreamMonocularEncoder, LinearProbeHead
from croco.tasks.finetune import FinetuneTask
from croco.tasks.reconstruction import render_panel

__all__ = ["ClassificationTask"]


class ClassificationTask(FinetuneTask):
    """Args: as ``FinetuneTask`` (no head arguments), plus ``num_classes``, optional ``class_names`` for the
    panels, and ``label_smoothing``."""

    panel_caption = "input, with the predicted class (probability) and the true class"

    def __init__(
        self,
        model: Mapping[str, Any],
        num_classes: int,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: expected an integer >= 2")
        self.num_classes = num_classes
        super().__init__(model, None, finetune, optim, compile)
        self.save_hyperparameters(
            {"model": dict(model), "num_classes": num_classes, "finetune": self.settings,
             "optim": self.recipe.to_dict(), "compile": bool(compile), "label_smoothing": float(label_smoothing),
             "class_names": list(class_names) if class_names else None}, logger=False,
        )  # fmt: skip
        self.val_metrics = ClassificationMetrics(num_classes)
        self.test_metrics = ClassificationMetrics(num_classes)

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> CroCoDownstreamMonocularEncoder:
        return CroCoDownstreamMonocularEncoder(LinearProbeHead(self.num_classes), **model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.net(image)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if self.hparams.class_names is None and getattr(datamodule, "class_names", None):
            self.hparams.class_names = list(datamodule.class_names)
        super().on_fit_start()

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(batch["image"]).float()
        return F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing), logits

    def update_metrics(self, metrics: ClassificationMetrics, batch: Mapping[str, Any], output: torch.Tensor) -> None:
        metrics.update(output, batch["label"])

    def _name(self, index: int) -> str:
        names = self.hparams.class_names
        return names[index] if names and index < len(names) else f"class {index}"

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        with self.evaluating():
            probs = self(samples["image"]).float().softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        captions = [f"predicted {self._name(int(p))} ({float(c):.2f}), true {self._name(int(t))}"
                    for p, c, t in zip(pred, conf, samples["label"])]  # fmt: skip
        return render_panel({"input": denormalize(samples["image"].float()).cpu()}, ("input",), captions=captions)
