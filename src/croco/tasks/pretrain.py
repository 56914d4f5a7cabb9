"""CroCo pretraining as a LightningModule: cross-view completion with the official optimisation recipe.

The module knows nothing about files or configs: it receives plain values (the CroCoNet keyword arguments of a
preset, the mask ratio, the optimiser recipe) and stores exactly those as hyper-parameters, so every Lightning
checkpoint can rebuild its network without pickled modules (``PretrainTask.load_from_checkpoint(path)``).
The trainer supplies the rest at ``configure_optimizers`` time: the per-device batch size, the number of
devices, nodes and accumulation steps (for the lr scaling rule) and the number of optimizer steps per epoch
(for the per-step schedule).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from croco.models import CroCoNet, MaskedMSE
from croco.models.checkpoints import load_strict, read_official_checkpoint
from croco.models.pos_embed import interpolate_pos_embed
from croco.tasks.optim import OptimRecipe, build_optimizer, build_scheduler, rebase_scheduler, scaled_lr
from croco.tasks.reconstruction import fixed_mask, masked_psnr, patches_to_rgb, unnormalize_prediction

__all__ = ["PretrainTask", "effective_batch_size", "steps_per_epoch"]

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
    """Pairs per optimizer step over the whole job: per-device batch x devices x nodes x accumulation."""
    per_device = _batch_size_of(trainer.train_dataloader)
    if per_device is None and trainer.datamodule is not None:
        per_device = getattr(trainer.datamodule, "batch_size", None)
    if not per_device:
        raise ValueError("cannot find the per-device batch size (train dataloader has no batch_size)")
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


def steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps per epoch: train batches (after ``limit_train_batches``) / accumulation, rounded up
    (Lightning steps on the last, incomplete accumulation window of an epoch)."""
    if trainer.train_dataloader is None:  # configure_optimizers runs before Lightning loads the train data
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        raise ValueError(f"the train dataloader must have a finite, positive length (got {batches} batches)")
    return math.ceil(batches / trainer.accumulate_grad_batches)


class PretrainTask(pl.LightningModule):
    """Masked cross-view completion: image 1 with ``mask_ratio`` of its patches masked, image 2 unmasked.

    Args:
        model: CroCoNet keyword arguments (a ``conf/model`` preset), without ``mask_ratio``.
        mask_ratio: fraction of image-1 patches to mask, in (0, 1).
        optim: the optimisation recipe (``OptimRecipe`` keys): blr, lr, min_lr, weight_decay, betas, eps,
            warmup_epochs, epochs (cosine horizon), clip_grad.
        compile: compile the network with ``torch.compile`` (module-level compile: state-dict keys unchanged).
        norm_pix_loss: predict per-patch normalised pixels (the official pretraining loss).
        init_from: optional official ``.pth`` (``{"model", ...}`` layouts of ``croco.models.checkpoints``) whose
            weights initialise the network when fitting starts; the architecture must match the preset (cosine
            buffers are resampled to the preset's image size).
        mask_seed: training masks are drawn from a generator seeded by (mask_seed, global step, batch index,
            rank), so a resumed run sees exactly the masks of an uninterrupted one; null draws them from the
            global RNG like the official code (not reproducible across a resume).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        mask_ratio: float = 0.9,
        optim: Mapping[str, Any] | None = None,
        compile: bool = False,
        norm_pix_loss: bool = True,
        init_from: str | None = None,
        mask_seed: int | None = 0,
    ):
        super().__init__()
        model = dict(model)
        if "mask_ratio" in model:
            raise ValueError("model.mask_ratio: not a model key; the mask ratio is masking.ratio")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: expected a number strictly between 0 and 1")
        self.recipe = OptimRecipe.from_mapping(optim)
        self.save_hyperparameters(
            {
                "model": model,
                "mask_ratio": float(mask_ratio),
                "optim": self.recipe.to_dict(),
                "compile": bool(compile),
                "norm_pix_loss": bool(norm_pix_loss),
                "init_from": None if init_from is None else str(init_from),
                "mask_seed": None if mask_seed is None else int(mask_seed),
            },
            logger=False,
        )
        self.net = CroCoNet(**model, mask_ratio=float(mask_ratio))
        self.criterion = MaskedMSE(norm_pix_loss=norm_pix_loss, masked=True)
        self.run_config: dict[str, Any] | None = None  # the resolved run config, stored in every checkpoint
        self.peak_lr: float | None = None
        self.steps_per_epoch: int | None = None
        self._compiled = False
        self._initialised_from_official = False

    # ------------------------------------------------------------------------------------------ setup
    def _load_official_weights(self, path: Path) -> None:
        kwargs, state = read_official_checkpoint(path)
        state = interpolate_pos_embed(self.net, dict(state))
        mismatch = load_strict(self.net, state)
        if mismatch:
            raise ValueError(
                f"init_from={path}: weights do not fit the model preset: {mismatch} "
                f"(checkpoint: {kwargs or 'CroCoNet defaults'})"
            )
        log.info("initialised the network from %s", path)

    def on_fit_start(self) -> None:
        """Apply ``init_from`` when a fit starts fresh. When it resumes, the checkpoint (already restored at this
        point) has the weights, and ``load_from_checkpoint`` never needs the official file either."""
        if not self.hparams.init_from or self._initialised_from_official:
            return
        if self.trainer.ckpt_path is not None:
            log.info(
                "resuming from %s: init_from=%s not applied", self.trainer.ckpt_path, self.hparams.init_from
            )
        else:
            self._load_official_weights(Path(self.hparams.init_from))
        self._initialised_from_official = True

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            self.net.compile()
            self._compiled = True

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        spe = self.steps_per_epoch = steps_per_epoch(trainer)
        batch = effective_batch_size(trainer)
        self.peak_lr = scaled_lr(self.recipe, batch)
        optimizer = build_optimizer(self.net, self.recipe, self.peak_lr)
        scheduler = build_scheduler(optimizer, self.recipe, spe, self.peak_lr)
        if trainer.is_global_zero:
            source = "optim.lr" if self.recipe.lr is not None else f"blr {self.recipe.blr:g} x {batch} / 256"
            log.info(
                "effective batch %d (per device x %d devices x %d nodes x %d accumulation); peak lr %.3g (%s); "
                "%d optimizer steps per epoch; warmup %g epochs, cosine horizon %g epochs",
                batch, trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches, self.peak_lr,
                source, spe, self.recipe.warmup_epochs, self.recipe.epochs,
            )  # fmt: skip
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

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
        """A resumed run keeps its place in the schedule (in epochs) when this launch has another number of
        optimizer steps per epoch or another peak lr (devices, nodes, accumulation, limit_train_batches)."""
        scheduler = self.lr_schedulers()
        epoch = rebase_scheduler(scheduler, self.steps_per_epoch, self.peak_lr, self.recipe.min_lr)
        if epoch is not None:
            log.warning(
                "resumed schedule re-based at epoch %.3f onto %d steps per epoch and peak lr %.3g (the checkpoint "
                "was written with other devices, accumulation or batch limits)", epoch, self.steps_per_epoch,
                self.peak_lr,
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

    # ------------------------------------------------------------------------------------------ steps
    def forward(
        self, img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(img1, img2, mask)

    def training_mask(
        self, batch_size: int, num_patches: int, batch_idx: int, device: torch.device
    ) -> torch.Tensor | None:
        """The mask of a training batch: a function of (mask_seed, global step, batch index, rank), or None."""
        if self.hparams.mask_seed is None:
            return None
        key = [self.hparams.mask_seed, self.global_step, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        return fixed_mask(batch_size, num_patches, self.hparams.mask_ratio, seed=seed, device=device)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        img1, img2 = batch["img1"], batch["img2"]
        grid = self.net.patch_embed.grid(*img1.shape[-2:])
        mask = self.training_mask(img1.shape[0], grid[0] * grid[1], batch_idx, img1.device)
        pred, mask, target = self.net(img1, img2, mask)
        loss = self.criterion(pred, mask, target)
        if not torch.isfinite(loss):  # the official trainer stops here too
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; "
                "lower optim.blr or set optim.clip_grad"
            )
        batch_size = img1.shape[0]
        # averaged over ranks, as the official trainer logs it
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)  # fmt: skip
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False,
                 prog_bar=True, batch_size=batch_size)  # fmt: skip
        if self.steps_per_epoch:  # fractional epochs: the schedule's x-axis, comparable across batch sizes
            scheduler = self.lr_schedulers()
            self.log("train/epoch", scheduler.last_epoch / self.steps_per_epoch, on_step=True, on_epoch=False,
                     batch_size=batch_size)  # fmt: skip
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and masked-patch PSNR with a fixed mask per batch index, so the numbers are comparable over time."""
        img1, img2 = batch["img1"], batch["img2"]
        grid = self.net.patch_embed.grid(*img1.shape[-2:])
        mask = fixed_mask(img1.shape[0], grid[0] * grid[1], self.hparams.mask_ratio, seed=batch_idx,
                          device=img1.device)  # fmt: skip
        pred, mask, target = self.net(img1, img2, mask)
        loss = self.criterion(pred, mask, target)
        pixels = unnormalize_prediction(pred.float(), target.float()) if self.hparams.norm_pix_loss else pred
        psnr = masked_psnr(patches_to_rgb(pixels), patches_to_rgb(target), mask).mean()
        batch_size = img1.shape[0]
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/psnr_masked", psnr, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        return loss

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make every checkpoint self-describing: the resolved run config and the CroCoNet arguments."""
        checkpoint["croco_kwargs"] = dict(self.net.croco_kwargs)
        if self.run_config is not None:
            checkpoint["cfg"] = self.run_config
