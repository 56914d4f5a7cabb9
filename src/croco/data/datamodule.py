"""``PairDataModule``: weighted shard folders -> overlap-filtered, scene-split, augmented pair batches.

Data flow: the shard folders are indexed once in ``setup`` (``croco.data.index``); each epoch
``EpochPairSampler`` (``croco.data.sampler``) draws ``pairs_per_epoch`` pairs from the sources in proportion to
their weights and a seed per sample (a plain map-style sampler, sharded by Lightning's
``DistributedSamplerWrapper`` under DDP); ``PairDataset`` (``croco.data.dataset``) reads, decodes and crops
whole batches in the workers; colour jitter and normalisation run batched in ``on_after_batch_transfer`` on the
training device.

The data module knows nothing about where shards come from: ``generate_if_missing`` is any callable that fills
an empty folder (the configs pass the embedded generator, ``croco.synth.pipeline.generate_pairs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from croco.data.dataset import PairDataset, collate_pairs
from croco.data.index import PairSource, SplitReport, build_index
from croco.data.sampler import EpochPairSampler
from croco.data.shards import ShardError
from croco.data.splits import fill_if_empty
from croco.data.transforms import PairTransform, finish_batch, parse_transforms
from croco.utils.sizes import as_hw

log = logging.getLogger(__name__)


class PairDataModule(LightningDataModule):
    """Image pairs from one or more shard folders, for CroCo pretraining (and any pair task).

    Args:
        sources: shard folders, each ``{path, weight}`` (or a bare path, weight 1); weights are relative
            shares of each training epoch.
        img_size: output size of both views (square int or (height, width)).
        transforms: official grammar, e.g. ``crop224+acolor``; ``crop`` alone crops to ``img_size``;
            ``resize<S>`` resizes the shorter side first.
        homography: probability of a random perspective warp of view 2 (the paper's; off by default, the
            authors later found it unhelpful). ``homography_scale``: corner displacement as a fraction of the side.
        overlap_min, overlap_max: keep pairs whose overlap ``min(covis12, covis21)`` lies in this range.
        val_fraction: fraction of *scenes* held out for validation (deterministic hash of the scene id).
        batch_size: per device (with DDP the global batch is batch_size * world_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        pairs_per_epoch: training pairs per epoch (default: the number of training pairs).
        seed: drives the per-epoch draw and every per-sample augmentation.
        generate_if_missing: a callable ``f(folder)`` that fills an empty folder with shards (e.g. a partial of
            ``croco.synth.pipeline.generate_pairs``); if set, ``prepare_data`` calls it for every source folder
            that holds no shard yet. None: every folder must already hold shards.
        max_bad_fraction: fraction of a split that may be corrupt (skipped and counted) before training stops.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        img_size: int | Sequence[int] = 224,
        transforms: str = "crop+acolor",
        homography: float = 0.0,
        homography_scale: float = 0.15,
        overlap_min: float = 0.0,
        overlap_max: float = 1.0,
        val_fraction: float = 0.05,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        pairs_per_epoch: int | None = None,
        seed: int = 0,
        generate_if_missing: Callable[[Path], Any] | None = None,
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(sources, (str, Path, Mapping)):
            sources = [sources]
        self.sources = [PairSource.parse(entry) for entry in sources]
        if not self.sources:
            raise ValueError("PairDataModule needs at least one source folder")
        self.spec = parse_transforms(transforms, as_hw(img_size, "data.img_size"))
        if not 0.0 <= overlap_min <= overlap_max <= 1.0:
            raise ValueError(f"need 0 <= overlap_min <= overlap_max <= 1, got {overlap_min}, {overlap_max}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.train_transform = PairTransform(
            self.spec, homography=homography, homography_scale=homography_scale
        )
        self.val_transform = PairTransform(self.spec, train=False)
        self.overlap_min, self.overlap_max = float(overlap_min), float(overlap_max)
        self.val_fraction = float(val_fraction)
        self.batch_size = int(batch_size)
        self._resume_position: dict[str, int] | None = None  # from a checkpoint: where its epoch stopped
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.pairs_per_epoch = pairs_per_epoch
        self.seed = int(seed)
        if generate_if_missing is not None and not callable(generate_if_missing):
            raise ValueError(
                f"data.generate_if_missing={generate_if_missing!r}: expected null or a callable that fills a folder "
                "(a config with _target_ and _partial_: true)"
            )
        self.generate_if_missing = generate_if_missing
        self.max_bad_fraction = float(max_bad_fraction)
        self.data_train: PairDataset | None = None
        self.data_val: PairDataset | None = None
        self.report: SplitReport | None = None

    # -- preparation ------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the embedded dataset into empty source folders (once per node, before ``setup``)."""
        for source in self.sources:
            fill_if_empty(source.path, self.generate_if_missing)

    def setup(self, stage: str | None = None) -> None:
        """Index the shards and build both splits (idempotent; runs on every rank)."""
        if self.data_train is not None:
            return
        train, val, report = build_index(self.sources, self.overlap_min, self.overlap_max, self.val_fraction)
        for reader in train.readers:
            try:
                self.train_transform.check_source_size(*reader.resolution)
            except ValueError as error:
                raise ShardError(f"{reader.path}: {error}") from None
        for line in report.lines():
            log.info(line)
        if len(train) == 0:
            raise ShardError(
                f"{', '.join(str(s.path) for s in self.sources)}: no training pairs with overlap in "
                f"[{self.overlap_min}, {self.overlap_max}] ({report.pairs} pairs in {report.shards} shards)"
            )
        if len(val) == 0 and self.val_fraction > 0:
            log.warning(
                "validation split is empty (%d scenes too few for val_fraction=%s)",
                len({s for r in train.readers for s in r.scene}),
                self.val_fraction,
            )
        self.report = report
        common = {"seed": self.seed, "max_bad_fraction": self.max_bad_fraction}
        self.data_train = PairDataset(train, self.train_transform, split="train", **common)
        self.data_val = PairDataset(val, self.val_transform, split="val", **common)

    # -- loaders -----------------------------------------------------------------------------------------

    def _loader(self, dataset: PairDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_pairs,
            **kwargs,
        )

    def train_sampler(self) -> EpochPairSampler:
        assert self.data_train is not None, "call setup() first"
        weights = [source.weight for source in self.sources]
        sampler = EpochPairSampler(self.data_train.index.source, weights, self.pairs_per_epoch, self.seed)
        position, self._resume_position = self._resume_position, None
        if position is not None and self.trainer is not None:
            world = self.trainer.world_size
            batches_per_epoch = len(sampler) // (self.batch_size * world)
            if 0 < position["batches"] < batches_per_epoch:
                sampler.resume_at(position["epoch"], position["batches"] * self.batch_size * world)
                log.info("resuming epoch %d of the pair order after %d batches", position["epoch"],
                         position["batches"])  # fmt: skip
        return sampler

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.data_train is not None
        return self._loader(self.data_train, sampler=self.train_sampler(), drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        assert self.data_val is not None
        if len(self.data_val) == 0:
            return []  # Lightning skips validation without loaders
        return self._loader(self.data_val, shuffle=False, drop_last=False)

    # -- batches -----------------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Colour jitter + ImageNet normalisation, batched on the training device (see transforms.finish_batch)."""
        return finish_batch(batch)

    @property
    def bad_pairs(self) -> int:
        """Corrupt pairs found so far, summed over splits and all DataLoader workers."""
        return sum(d.bad_pairs for d in (self.data_train, self.data_val) if d is not None and len(d))

    def teardown(self, stage: str | None = None) -> None:
        if self.bad_pairs:
            log.warning("%d corrupt pairs were skipped during %s", self.bad_pairs, stage)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the bad-pair count and, during fitting, how far the current epoch got
        (so that a mid-epoch resume continues that epoch's pair order instead of restarting it)."""
        state: dict[str, Any] = {"bad_pairs": self.bad_pairs}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            loop = trainer.fit_loop
            state["train_position"] = {
                "epoch": int(loop.epoch_progress.current.processed),
                "batches": int(loop.epoch_loop.batch_progress.current.processed),
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")
