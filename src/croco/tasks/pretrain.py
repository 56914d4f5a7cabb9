"""CroCo pretraining as a LightningModule: cross-view completion with the official optimisation recipe.

The module knows nothing about files or configs: it receives plain values (the CroCoNet keyword arguments of a
preset, the mask ratio, the optimiser recipe) and stores exactly those as hyper-parameters, so every Lightning
checkpoint can rebuild its network without pickled modules (``PretrainTask.load_from_checkpoint(path)``).
The recipe, schedule, logging and checkpoint contents shared with every task live in ``croco.tasks.base``.

Validation also measures whether the network uses view 2 at all (``croco.eval.crossview``): the masked loss of
every validation pair with its true view 2, with another scene's view 2 and with a grey image, under the same
fixed mask, logged per epoch as ``val/crossview/*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from croco.eval.crossview import (
    CrossViewAccumulator,
    ViewPool,
    blank_view,
    evaluate_batch,
    other_scene_views,
    per_sample_masked_loss,
)
from croco.models import CroCoNet, MaskedMSE
from croco.models.checkpoints import load_strict, read_official_checkpoint
from croco.models.masking import check_mask_ratio
from croco.models.pos_embed import interpolate_pos_embed
from croco.tasks.base import BaseTask
from croco.tasks.reconstruction import (
    NORM_PIX_NOTE,
    OTHER_RECONSTRUCTION,
    fixed_mask,
    masked_psnr,
    patches_to_rgb,
    reconstruction_views,
    render_panel,
    unnormalize_prediction,
)

__all__ = ["PretrainTask"]

log = logging.getLogger(__name__)

CROSSVIEW_CONDITIONS = ("true", "other", "blank")  # "self" is left to the CLI: one forward pass less


class PretrainTask(BaseTask):
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
        mask_seed: training masks are drawn on the batch's device from a generator seeded by (mask_seed, global
            step, batch index, rank), so a resumed run sees exactly the masks of an uninterrupted one; null draws
            them from one generator per process (on the task's device) seeded at fit start by the global seed
            plus the rank, as the official code seeds every rank with ``seed + rank`` (ranks draw different
            masks; not reproducible across a resume). Either way no mask is copied from the host and the
            step never waits for the device (the network trusts its own masks: ``check_mask=False``).
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
        super().__init__(optim=optim, compile=compile)
        model = dict(model)
        if "mask_ratio" in model:
            raise ValueError("model.mask_ratio: not a model key; the mask ratio is masking.ratio")
        mask_ratio = check_mask_ratio(mask_ratio)
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
        self._initialised_from_official = False
        self._mask_generator: torch.Generator | None = None  # mask_seed null: this process's own generator
        self._seeded_generators: dict[torch.device, torch.Generator] = {}  # mask_seed set: reseeded every step
        self._crossview: CrossViewAccumulator | None = None  # this validation epoch's cross-view sums
        self._crossview_pool: ViewPool | None = None  # the previous validation batch's view 2s
        self._warned_no_scene = False

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

    def _apply_init_from(self) -> None:
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

    def on_fit_start(self) -> None:
        self._apply_init_from()
        if self.hparams.mask_seed is None:  # the official seed + rank: every rank draws its own masks
            seed = np.random.SeedSequence([torch.initial_seed(), self.global_rank, self.global_step])
            generator = torch.Generator(device=self.device)
            self._mask_generator = generator.manual_seed(int(seed.generate_state(1)[0]))

    # ------------------------------------------------------------------------------------------ steps
    def forward(
        self, img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(img1, img2, mask)

    def training_mask(
        self, batch_size: int, num_patches: int, batch_idx: int, device: torch.device
    ) -> torch.Tensor | None:
        """The mask of a training batch, drawn on ``device``: a function of (mask_seed, global step, batch
        index, rank), or with ``mask_seed`` null a draw from this process's generator."""
        if self.hparams.mask_seed is None:
            if self._mask_generator is None:  # outside a fit: the global RNG, like the network's own masking
                return None
            return self.net.mask_generator(batch_size, num_patches, device, generator=self._mask_generator)
        key = [self.hparams.mask_seed, self.global_step, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])  # host arithmetic only
        device = torch.device(device)
        generator = self._seeded_generators.get(device)
        if generator is None:
            generator = self._seeded_generators[device] = torch.Generator(device=device)
        return self.net.mask_generator(batch_size, num_patches, device, generator=generator.manual_seed(seed))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        img1, img2 = batch["img1"], batch["img2"]
        grid = self.net.patch_embed.grid(*img1.shape[-2:])
        mask = self.training_mask(img1.shape[0], grid[0] * grid[1], batch_idx, img1.device)
        pred, mask, target = self.net(img1, img2, mask, check_mask=False)  # our own mask: no host read
        loss = self.criterion(pred, mask, target)
        self.log_training_loss(loss, batch_size=img1.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        """Fresh cross-view sums for every validation run: a sanity check never leaks into the numbers."""
        self._crossview = CrossViewAccumulator(CROSSVIEW_CONDITIONS, device=self.device)
        self._crossview_pool = None

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and masked-patch PSNR with a fixed mask per batch index, so the numbers are comparable over
        time; the same pass is the "true" condition of the cross-view health metric, whose "other" and "blank"
        conditions cost two more forward passes under the same mask."""
        img1, img2 = batch["img1"], batch["img2"]
        grid = self.net.patch_embed.grid(*img1.shape[-2:])
        mask = fixed_mask(img1.shape[0], grid[0] * grid[1], self.hparams.mask_ratio, seed=batch_idx,
                          device=img1.device)  # fmt: skip
        pred, mask, target = self.net(img1, img2, mask)
        per_sample = per_sample_masked_loss(pred, mask, target, self.hparams.norm_pix_loss)
        loss = per_sample.mean()  # = self.criterion(pred, mask, target): every row masks as many patches
        pixels = unnormalize_prediction(pred.float(), target.float()) if self.hparams.norm_pix_loss else pred
        psnr = masked_psnr(patches_to_rgb(pixels), patches_to_rgb(target), mask).mean()
        batch_size = img1.shape[0]
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/psnr_masked", psnr, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self._update_crossview(batch, mask, per_sample)
        return loss

    def _update_crossview(
        self, batch: Mapping[str, Any], mask: torch.Tensor, true_loss: torch.Tensor
    ) -> None:
        if self._crossview is None:  # validation_step called outside a validation loop
            self.on_validation_epoch_start()
        assert self._crossview is not None
        if "scene" not in batch and not self._warned_no_scene:
            log.warning("validation batches carry no 'scene' ids: the cross-view 'other' view 2 is another "
                        "sample's, possibly of the same scene")  # fmt: skip
            self._warned_no_scene = True
        result = evaluate_batch(self.net, batch, mask, conditions=CROSSVIEW_CONDITIONS,
                                norm_pix_loss=self.hparams.norm_pix_loss, pool=self._crossview_pool,
                                known={"true": true_loss})  # fmt: skip
        overlap = batch.get("overlap")
        if overlap is None:  # no overlap column: every pair in the top bin (the overall numbers stay right)
            overlap = torch.ones(true_loss.shape[0], device=true_loss.device)
        self._crossview.update(result.losses, overlap, result.valid)
        self._crossview_pool = ViewPool.of(batch["img2"], batch["scene"]) if "scene" in batch else None

    def on_validation_epoch_end(self) -> None:
        """Sum the cross-view state over ranks and log means and gaps (``val/crossview/*``)."""
        accumulator, self._crossview, self._crossview_pool = self._crossview, None, None
        if accumulator is None or self.trainer.sanity_checking:
            return
        accumulator.reduce_(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        # Every rank now holds the same sums, so all log the same keys (sync_dist collectives must match);
        # sync_dist only averages equal numbers and keeps Lightning from warning about unsynced epoch metrics.
        for key, value in accumulator.summary().metrics(prefix="val/crossview/").items():
            self.log(key, value, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------------------------------ panels
    @property
    def panel_caption(self) -> str:
        """What the panel shows (the W&B caption), with the de-normalisation note of a norm-pix model."""
        columns = "reference | masked | reconstruction | reconstruction from another scene's view 2 | target"
        return f"{columns}. {NORM_PIX_NOTE}" if self.hparams.norm_pix_loss else columns

    def render_panel(self, samples: Mapping[str, torch.Tensor], seed: int = 0) -> Any:
        """Reference view | masked view | reconstruction | reconstruction from another sample's view 2 |
        target, with a fixed mask (``seed``). The ``Panels`` samples come from different validation scenes, so
        another sample's view 2 shows another scene (without scene ids every sample counts as its own scene);
        a single sample gets a grey view 2 instead."""
        img1, img2 = samples["img1"], samples["img2"]
        grid = self.net.patch_embed.grid(*img1.shape[-2:])
        mask = fixed_mask(img1.shape[0], grid[0] * grid[1], self.hparams.mask_ratio, seed, img1.device)
        other, valid = other_scene_views(img2, samples.get("scene"))
        label = "reconstruction from another scene's view 2"
        if not bool(valid.all()):
            other = torch.where(valid.view(-1, 1, 1, 1), other, blank_view(img2))
            label = "reconstruction from a grey view 2" if not valid.any() else f"{label} (or a grey one)"
        was_training = self.net.training
        self.net.eval()
        try:
            views = reconstruction_views(self.net, img1, img2, mask, norm_pix_loss=self.hparams.norm_pix_loss,
                                         other_img2=other)  # fmt: skip
        finally:
            self.net.train(was_training)
        columns = ("reference", "masked", "reconstruction", OTHER_RECONSTRUCTION, "target")
        title = NORM_PIX_NOTE if self.hparams.norm_pix_loss else "Reconstructions are raw pixel predictions."
        return render_panel(views, columns, labels={OTHER_RECONSTRUCTION: label}, title=title)
