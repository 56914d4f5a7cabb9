"""``FinetuneTask``: what every downstream task shares on top of ``BaseTask``.

- The network: a downstream wrapper (``croco.models.downstream``) around a task head, built from plain values
  (the backbone preset's CroCoNet arguments and the head's arguments), so checkpoints rebuild it.
- Backbone initialisation (``finetune.init``): ``scratch``, a Lightning checkpoint of this project (a
  pretraining or a fine-tuning run) or an official ``.pth`` in any of its layouts. Unused parts are dropped and
  everything else must match (``croco.models.checkpoints.load_backbone``). Applied when a fit starts fresh; a
  resumed run gets its weights from its own checkpoint.
- ``finetune.freeze``: nothing, the whole backbone (linear probing) or its first k encoder blocks.
- ``finetune.drop_path``: stochastic depth on the blocks that train.
- Layer-wise lr decay (``optim.layer_decay``) through ``croco.models.downstream.layer_id``; the rest of the
  optimisation recipe (AdamW, no-decay rule, warm-up + cosine) is the pretraining one.

A subclass implements ``build_net``, ``compute_loss`` (the loss and the output of a batch), ``update_metrics``
(its ``val_metrics`` / ``test_metrics``, torchmetrics objects with a dict ``compute``) and ``render_panel``; the
steps, the loss and metric logging and the epoch ends are shared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from croco.models.checkpoints import load_backbone
from croco.models.downstream import freeze, layer_id, set_drop_path
from croco.tasks.base import BaseTask, batch_size_of
from croco.tasks.checks import finetune_settings
from croco.tasks.optim import LayerOf

__all__ = ["FinetuneTask"]

log = logging.getLogger(__name__)

class FinetuneTask(BaseTask):
    """Shared downstream machinery; see the module docstring. ``model``: CroCoNet keyword arguments of the
    backbone (a ``conf/model`` preset, ``img_size`` = the task's training size); ``head``: the head's keyword
    arguments; ``finetune``: init / freeze / drop_path."""

    net: nn.Module

    def __init__(
        self,
        model: Mapping[str, Any],
        head: Mapping[str, Any] | None = None,
        finetune: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
    ):
        super().__init__(optim=optim, compile=compile)
        self.settings = finetune_settings(finetune)
        self.net = self.build_net(dict(model), dict(head or {}))
        self.frozen = freeze(self.net, self.settings["freeze"])
        if self.settings["drop_path"] > 0:
            set_drop_path(self.net, self.settings["drop_path"])
            self._no_drop_path_in_frozen_blocks()
        self._initialised = False

    def build_net(self, model: dict[str, Any], head: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def _no_drop_path_in_frozen_blocks(self) -> None:
        """A frozen block does not learn, so dropping it only adds noise to the blocks above."""
        for block in list(self.net.enc_blocks) + list(getattr(self.net, "dec_blocks", [])):
            if isinstance(block.drop_path, DropPath) and not any(p.requires_grad for p in block.parameters()):
                block.drop_path = nn.Identity()

    def layer_of(self) -> LayerOf | None:
        return partial(layer_id, self.net)

    # ------------------------------------------------------------------------------------------ init
    def on_fit_start(self) -> None:
        classes, data_classes = getattr(self, "num_classes", None), getattr(self.trainer.datamodule, "num_classes", None)
        if classes is not None and data_classes is not None and classes != data_classes:
            raise ValueError(f"task.num_classes={classes} but the data have {data_classes} classes; "
                             f"set task.num_classes={data_classes}")  # fmt: skip
        init = self.settings["init"]
        if self._initialised or init == "scratch":
            return
        if self.trainer.ckpt_path is not None:
            log.info("resuming from %s: finetune.init=%s not applied", self.trainer.ckpt_path, init)
        else:
            log.info(load_backbone(self.net, Path(init), with_head=self.settings["init_head"],
                                   with_decoder=self.settings["init_decoder"]))
        self._initialised = True

    def on_train_epoch_start(self) -> None:
        """A frozen backbone stays in eval mode (no drop path, no statistics updates), as in linear probing."""
        if self.settings["freeze"] == "backbone":
            for name, module in self.net.named_children():
                if name != "head":
                    module.eval()

    # ------------------------------------------------------------------------------------------ steps
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Any]:
        """(loss, the network's output for the metrics) of a batch."""
        raise NotImplementedError

    def update_metrics(self, metrics: Any, batch: Mapping[str, Any], output: Any) -> None:
        raise NotImplementedError

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.compute_loss(batch)
        self.log_training_loss(loss, batch_size=batch_size_of(batch))
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        loss, output = self.compute_loss(batch)
        self.update_metrics(self.val_metrics if stage == "val" else self.test_metrics, batch, output)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch_size_of(batch))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def _log_epoch_metrics(self, stage: str, metrics: Any) -> None:
        """Log a split's metrics (torchmetrics syncs them across ranks in ``compute``) and reset them."""
        if not self.trainer.sanity_checking:
            for key, value in metrics.compute().items():
                self.log(f"{stage}/{key}", value, on_epoch=True, sync_dist=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", self.test_metrics)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The network in eval mode without gradients (panels), restored afterwards."""
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.net.train(was_training)
