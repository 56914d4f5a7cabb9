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

A subclass implements ``build_net``, the steps and ``render_panel``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from croco.models.checkpoints import load_backbone
from croco.models.downstream import freeze, layer_id, set_drop_path
from croco.tasks.base import BaseTask
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
        init = self.settings["init"]
        if self._initialised or init == "scratch":
            return
        if self.trainer.ckpt_path is not None:
            log.info("resuming from %s: finetune.init=%s not applied", self.trainer.ckpt_path, init)
        else:
            log.info(load_backbone(self.net, Path(init), with_head=self.settings["init_head"]))
        self._initialised = True

    def on_train_epoch_start(self) -> None:
        """A frozen backbone stays in eval mode (no drop path, no statistics updates), as in linear probing."""
        if self.settings["freeze"] == "backbone":
            for name, module in self.net.named_children():
                if name != "head":
                    module.eval()

    # ------------------------------------------------------------------------------------------ helpers
    def log_metrics(self, prefix: str, values: Mapping[str, torch.Tensor | float]) -> None:
        for key, value in values.items():
            self.log(f"{prefix}/{key}", value, on_epoch=True, sync_dist=True)
