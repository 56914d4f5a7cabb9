"""``BaseTask``: what every LightningModule of the project shares, so that a task only writes its steps.

- The optimisation recipe (``croco.tasks.optim``): AdamW with the official no-decay rule, the linear lr scaling
  ``blr x effective batch / 256``, and the one per-step schedule (warm-up + half-cycle cosine in fractional
  epochs), re-based when a resumed run has another number of steps per epoch or another peak lr.
- Optional gradient clipping (``optim.clip_grad``), the global gradient norm on logged steps, the train loss,
  lr and fractional epoch, and a stop with a clear message when the loss is not finite.
- ``torch.compile`` of the network at ``configure_model`` time (module-level: state-dict keys unchanged).
- Every checkpoint carries the resolved run config (``run_config``) and the network's constructor arguments.
- Panels: ``render_panel(samples)`` turns a few validation samples into a picture; the ``Panels`` callback
  (``croco.tasks.callbacks``) collects the samples, calls it and writes / logs the image.

A task subclass sets ``self.net`` (the module that is optimised) and implements ``training_step``,
``validation_step`` and, for panels, ``render_panel``. The trainer supplies what the recipe needs once it has
loaded the train data (``on_train_start``): the per-device batch size, devices, nodes and accumulation (for the
lr scaling) and the number of optimizer steps per epoch (for the schedule).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from croco.tasks.optim import (
    LayerOf,
    OptimRecipe,
    build_optimizer,
    build_scheduler,
    rebase_scheduler,
    scaled_lr,
)

__all__ = ["BaseTask", "effective_batch_size", "steps_per_epoch"]

log = logging.getLogger(__name__)


def _batch_size_of(loader: Any) -> int | None:
    """Per-device batch size of a (possibly wrapped) train dataloader."""
    for candidate in (loader, getattr(loader, "iterables", None)):
        if isinstance(candidate, Mapping | list | tuple):
            candidate = next(iter(candidate.values() if isinstance(candidate, Mapping) else candidate), None)
        if candidate is None:
            continue
        size = getattr(candidate, "batch_size", None)
        if size is None and getattr(candidate, "batch_sampler", None) is not None:
            size = getattr(candidate.batch_sampler, "batch_size", None)
        if size:
            return int(size)
    return None


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Samples per optimizer step over the whole job: per-device batch x devices x nodes x accumulation."""
    per_device = _batch_size_of(trainer.train_dataloader)
    if per_device is None and trainer.datamodule is not None:
        per_device = getattr(trainer.datamodule, "batch_size", None)
    if not per_device:
        raise ValueError("cannot find the per-device batch size (train dataloader has no batch_size)")
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


def steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps per epoch: train batches (after ``limit_train_batches``) / accumulation, rounded up
    (Lightning steps on the last, incomplete accumulation window of an epoch). Known once the train data are
    loaded, i.e. from ``on_train_start`` on."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        raise ValueError(f"the train dataloader must have a finite, positive length (got {batches} batches)")
    return math.ceil(batches / trainer.accumulate_grad_batches)


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (batches are dicts of tensors)."""
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise ValueError(f"batch of type {type(batch).__name__} holds no tensor")


class BaseTask(pl.LightningModule):
    """The shared recipe; see the module docstring. ``optim``: ``OptimRecipe`` keys; ``compile``: compile
    ``self.net`` when the model is configured."""

    net: nn.Module

    def __init__(self, optim: Mapping[str, Any] | None = None, compile: bool = False):
        super().__init__()
        self.recipe = OptimRecipe.from_mapping(optim)
        self.compile_net = bool(compile)
        self.run_config: dict[str, Any] | None = None  # the resolved run config, stored in every checkpoint
        self.peak_lr: float | None = None
        self.steps_per_epoch: int | None = None
        self._compiled = False

    # ------------------------------------------------------------------------------------------ optimisation
    def configure_model(self) -> None:
        if self.compile_net and not self._compiled:
            self.net.compile()
            self._compiled = True

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW and the schedule, built with provisional numbers: the trainer has not loaded the train data yet,
        so steps per epoch and the effective batch (hence the peak lr) are bound in ``on_train_start``."""
        optimizer = build_optimizer(self.net, self.recipe, lr=0.0, layer_of=self.layer_of())
        scheduler = build_scheduler(optimizer, self.recipe, steps_per_epoch=1, peak_lr=0.0)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def layer_of(self) -> LayerOf | None:
        """The depth of each parameter of ``self.net`` for layer-wise lr decay (``optim.layer_decay``); None:
        the task has no notion of depth (pretraining)."""
        return None

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:  # fmt: skip
        """Clip to ``optim.clip_grad`` (unless the trainer sets its own value); nothing when both are null."""
        value = gradient_clip_val if gradient_clip_val is not None else self.recipe.clip_grad
        if value:
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm
                                or "norm")  # fmt: skip

    def on_train_start(self) -> None:
        """Bind the schedule to this launch: its steps per epoch and peak lr (from the effective batch). A resumed
        run keeps its place in the schedule, in epochs, when this launch has another number of optimizer steps
        per epoch or another peak lr (devices, nodes, accumulation, limit_train_batches)."""
        trainer = self.trainer
        spe = self.steps_per_epoch = steps_per_epoch(trainer)
        batch = effective_batch_size(trainer)
        self.peak_lr = scaled_lr(self.recipe, batch)
        epoch = rebase_scheduler(self.lr_schedulers(), spe, self.peak_lr, self.recipe.min_lr)
        resumed = trainer.ckpt_path is not None
        if resumed and epoch is not None:
            log.warning(
                "resumed schedule re-based at epoch %.3f onto %d steps per epoch and peak lr %.3g (the checkpoint "
                "was written with other devices, accumulation or batch limits)", epoch, spe, self.peak_lr,
            )  # fmt: skip
        if trainer.is_global_zero:
            source = "optim.lr" if self.recipe.lr is not None else f"blr {self.recipe.blr:g} x {batch} / 256"
            log.info(
                "effective batch %d (per device x %d devices x %d nodes x %d accumulation); peak lr %.3g (%s); "
                "%d optimizer steps per epoch; warmup %g epochs, cosine horizon %g epochs",
                batch, trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches, self.peak_lr,
                source, spe, self.recipe.warmup_epochs, self.recipe.epochs,
            )  # fmt: skip

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the global gradient norm (before clipping), as the official trainer computes it, on the steps whose
        logs Lightning writes (its rule: ``(optimizer steps so far + 1) % log_every_n_steps == 0``)."""
        every = self.trainer.log_every_n_steps
        if not every or (self.trainer.global_step + 1) % every:
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------------ logging
    def log_training_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Stop on a non-finite loss (as the official trainer does); log the loss averaged over ranks, the lr
        and the fractional epoch (the schedule's x-axis, comparable across batch sizes)."""
        if not torch.isfinite(loss):
            for logger in self.loggers:  # the crashed launch's metrics end with the step that diverged
                logger.log_metrics({"train/loss": float(loss.detach())}, step=self.global_step)
                logger.save()
            lr_key = "optim.lr" if self.recipe.lr is not None else "optim.blr"
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; lower {lr_key} "
                f"(now {self.recipe.lr if self.recipe.lr is not None else self.recipe.blr:g}) or set optim.clip_grad"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)  # fmt: skip
        # the peak of the groups (with layer-wise decay, the head's lr; the lower depths get a fixed fraction of it)
        lr = max(group["lr"] for group in self.trainer.optimizers[0].param_groups)
        self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        if self.steps_per_epoch:
            scheduler = self.lr_schedulers()
            self.log("train/epoch", scheduler.last_epoch / self.steps_per_epoch, on_step=True, on_epoch=False,
                     batch_size=batch_size)  # fmt: skip

    # ------------------------------------------------------------------------------------------ panels
    panel_caption = "prediction"
    """What a panel shows, for the image caption on the dashboard."""

    def render_panel(self, samples: Mapping[str, torch.Tensor]) -> Any:
        """A PIL image of a few samples (a batch dict on this module's device); None: the task draws no panel."""
        return None

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make every checkpoint self-describing: the resolved run config and the network's arguments."""
        kwargs = getattr(self.net, "croco_kwargs", None)
        if kwargs is not None:
            checkpoint["croco_kwargs"] = dict(kwargs)
        if self.run_config is not None:
            checkpoint["cfg"] = self.run_config
