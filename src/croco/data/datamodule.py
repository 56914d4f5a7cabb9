"""``PairDataModule``: weighted shard folders -> overlap-filtered, scene-split, augmented pair batches.

Data flow: the shard folders are indexed once in ``setup`` (``croco.data.index``); each epoch
``EpochPairSampler`` (``croco.data.sampler``) draws ``pairs_per_epoch`` pairs from the sources in proportion to
their weights and a seed per sample (a plain map-style sampler, sharded by Lightning's
``DistributedSamplerWrapper`` under DDP); ``PairDataset`` (``croco.data.dataset``) reads, decodes and crops
whole batches in the workers; colour jitter and normalisation run batched in ``on_after_batch_transfer`` on the
training device.

The data module knows nothing about where shards come from: ``generate_if_missing`` is any callable that fills
an empty folder (the configs pass the embedded generator, ``croco.synth.pipeline.generate_pairs``).

Streaming (``stream_val_shards``, for a generated folder): the callable runs in a background process
(``croco.data.streaming``) and training starts as soon as the validation shards and one training shard are
finished; every epoch boundary takes the shards finished since (the trainer reloads the train loader each epoch).
Validation is the first ``stream_val_shards`` shards, the same set for the whole run, and no scene of theirs is
trained on. An epoch keeps one length for the whole run (the planned number of training pairs, estimated while the
folder is incomplete), so the schedule's epochs do not change as shards arrive. Checkpoints record which training
shards each epoch used: a run resumed inside an epoch reads the same pairs in the same order.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from croco.data.dataset import PairDataset, collate_pairs
from croco.data.index import PairIndex, PairSource, SplitReport, build_index
from croco.data.sampler import EpochPairSampler
from croco.data.shards import ShardError, finished_shards
from croco.data.splits import fill_if_empty
from croco.data.streaming import BackgroundGeneration, planned_output, shard_name
from croco.data.transforms import PairTransform, decode_views_on, finish_batch, parse_transforms
from croco.utils.sizes import as_hw

log = logging.getLogger(__name__)


class PairDataModule(LightningDataModule):
    """Image pairs from one or more shard folders, for CroCo pretraining (and any pair task).

    Args:
        sources: shard folders, each ``{path, weight, generate}`` (or a bare path, weight 1); weights are relative
            shares of each training epoch; ``generate``: what fills this folder when it holds no shard, instead of
            ``generate_if_missing`` (e.g. self-pairs made from another source, filled after that one).
        img_size: output size of both views (square int or (height, width)).
        transforms: official grammar, e.g. ``crop224+acolor``; ``crop`` alone crops to ``img_size``;
            ``resize<S>`` resizes the shorter side first.
        homography: probability of a random perspective warp of view 2 (the paper's; off by default, the
            authors later found it unhelpful). ``homography_scale``: corner displacement as a fraction of the side.
        overlap_min, overlap_max: keep pairs whose overlap ``min(covis12, covis21)`` lies in this range.
        val_overlap: ``[min, max]`` for the validation pairs instead (None: the same range as training), so
            that runs trained on different overlap ranges are validated on the same pairs.
        val_fraction: fraction of *scenes* held out for validation (deterministic hash of the scene id).
        batch_size: per device (with DDP the global batch is batch_size * world_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        decode_on_device: the workers read and crop-plan the pairs but leave the JPEGs encoded; they are decoded
            batch-wise on the training device (nvJPEG on a GPU, ``torchvision.io.decode_jpeg``) before the batch
            moves there, then cropped as the workers planned (the same batch as decoding in the workers).
        pairs_per_epoch: training pairs per epoch (default: the number of training pairs).
        seed: drives the per-epoch draw and every per-sample augmentation.
        generate_if_missing: a callable ``f(folder)`` that fills an empty folder with shards (e.g. a partial of
            ``croco.synth.pipeline.generate_pairs``); if set, ``prepare_data`` calls it for every source folder
            that holds no shard yet and has no ``generate`` of its own. None: those folders must hold shards.
        max_bad_fraction: fraction of a split that may be corrupt (skipped and counted) before training stops.
        stream_val_shards: for a generated folder (``generate_if_missing`` set, one source): validation is its
            first ``stream_val_shards`` shards (``val_fraction`` is not used) and, in single-process training,
            generation runs in the background while training reads the finished shards (see the module doc).
            None: generate everything first, split by scene hash. No effect when ``generate_if_missing`` is None.
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
        val_overlap: Sequence[float] | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        pairs_per_epoch: int | None = None,
        seed: int = 0,
        generate_if_missing: Callable[[Path], Any] | None = None,
        max_bad_fraction: float = 0.01,
        stream_val_shards: int | None = None,
        decode_on_device: bool = False,
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
        if val_overlap is not None:
            if len(val_overlap) != 2 or not 0.0 <= float(val_overlap[0]) <= float(val_overlap[1]) <= 1.0:
                raise ValueError(f"data.val_overlap={list(val_overlap)}: expected [min, max] with 0 <= min <= max <= 1")
            val_overlap = (float(val_overlap[0]), float(val_overlap[1]))
        self.val_overlap = val_overlap
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.train_transform = PairTransform(
            self.spec, homography=homography, homography_scale=homography_scale
        )
        if decode_on_device and homography > 0:
            raise ValueError("data.decode_on_device=true needs data.homography=0 (the warp runs on decoded pixels)")
        self.decode_on_device = bool(decode_on_device)
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
        if stream_val_shards is not None and (isinstance(stream_val_shards, bool) or int(stream_val_shards) < 1
                                              or int(stream_val_shards) != stream_val_shards):  # fmt: skip
            raise ValueError(f"data.stream_val_shards={stream_val_shards!r}: expected null or an integer >= 1")
        self.stream_val_shards = None if stream_val_shards is None else int(stream_val_shards)
        if self.split_by_shards and len(self.sources) != 1:
            raise ValueError(
                f"data.stream_val_shards={self.stream_val_shards}: needs exactly one source folder (the generated "
                f"one), got {len(self.sources)}; set it to null to split several sources by scene"
            )
        self.data_train: PairDataset | None = None
        self.data_val: PairDataset | None = None
        self.report: SplitReport | None = None
        # split by shards (stream_val_shards): the background generation and what each epoch trains on
        self.background: BackgroundGeneration | None = None
        self.train_shards: list[str] = []  # training shard names of the current epoch
        self.shard_history: list[tuple[int, list[str]]] = []  # (first epoch, its training shards) per change
        self.epoch_pairs: int | None = None  # the run's epoch length (recorded in checkpoints)
        self._val_shards: list[str] = []
        self._val_scenes: np.ndarray | None = None
        self._train_loader: DataLoader | None = None
        self._val_loader: DataLoader | list | None = None
        self._bad_before = 0  # corrupt pairs of the train datasets replaced at epoch boundaries
        self._announced_end = False

    @property
    def split_by_shards(self) -> bool:
        """Generated data with ``stream_val_shards``: validation is a fixed block of shards, training takes the
        shards finished by each epoch boundary (the trainer must reload the train loader every epoch)."""
        return self.stream_val_shards is not None and self.generate_if_missing is not None

    # -- preparation ------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the embedded dataset into empty source folders (once per node, before ``setup``); with
        ``stream_val_shards``, start the generation of an incomplete folder in the background and wait for its
        validation shards and a first training shard."""
        if not self.split_by_shards:
            # the folders of the shared generator first: a source's own generator may read one (self-pairs)
            for source in sorted(self.sources, key=lambda source: source.generate is not None):
                fill_if_empty(source.path, source.generate or self.generate_if_missing)
            return
        assert self.generate_if_missing is not None
        folder = self.sources[0].path
        if self._generation_complete():
            return
        if self.trainer is not None and self.trainer.world_size > 1:
            log.info("%s is incomplete: generating the rest before training (streaming needs one process)", folder)
            self.generate_if_missing(folder)  # resumes: finished shards are kept
            return
        self.background = BackgroundGeneration(folder, self.generate_if_missing)
        self.background.start()
        atexit.register(self.background.stop)  # never leave it running after this process, whatever stops it
        self._wait_for_first_shards()

    def _generation_complete(self) -> bool:
        """Every planned shard is there (a callable that does not say what it plans: any shard is enough)."""
        assert self.generate_if_missing is not None
        planned = planned_output(self.generate_if_missing)
        shards = finished_shards(self.sources[0].path)
        return len(shards) >= planned.shards if planned is not None else bool(shards)

    def _wait_for_first_shards(self, poll_s: float = 0.5) -> None:
        """Until the validation shards and one training shard are finished; one-line errors when the background
        generation fails or ends without them."""
        assert self.background is not None and self.stream_val_shards is not None
        folder, count = self.sources[0].path, self.stream_val_shards
        needed = {shard_name(i) for i in range(count)}
        log.info(
            "waiting for the first %d shards of %s (%d for validation, 1 to train on) from the background "
            "generation, pid %d (progress: %s)", count + 1, folder, count, self.background.pid,
            self.background.log_path,
        )  # fmt: skip
        while True:
            names = {p.name for p in finished_shards(folder)}
            if needed <= names and len(names) > count:
                return
            failure = self.background.failure()
            if failure is not None:
                raise RuntimeError(failure)
            if self.background.returncode == 0:
                self._check_enough_shards(sorted(names))
                return
            time.sleep(poll_s)

    def _check_enough_shards(self, names: list[str]) -> None:
        count = self.stream_val_shards
        assert count is not None
        if len(names) <= count:
            raise ShardError(
                f"{self.sources[0].path}: {len(names)} shard(s); data.stream_val_shards={count} needs {count} for "
                "validation and at least one more to train on (generate more pairs or lower it)"
            )

    def setup(self, stage: str | None = None) -> None:
        """Index the shards and build both splits (idempotent; runs on every rank)."""
        if self.data_train is not None:
            return
        if self.split_by_shards:
            self._setup_by_shards()
            return
        train, val, report = build_index(
            self.sources, self.overlap_min, self.overlap_max, self.val_fraction, self.val_overlap
        )
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
        common = {"seed": self.seed, "max_bad_fraction": self.max_bad_fraction, "decode_on_device": self.decode_on_device}
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
        epoch_pairs = self.epoch_pairs if self.split_by_shards else self.pairs_per_epoch
        sampler = EpochPairSampler(self.data_train.index.source, weights, epoch_pairs, self.seed)
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
        if self.split_by_shards:
            self.check_background()
            if self._update_train_shards() or self._train_loader is None:
                assert self.data_train is not None
                self._train_loader = self._loader(self.data_train, sampler=self.train_sampler(), drop_last=True)
            return self._train_loader  # unchanged shards: the same loader (and its persistent workers)
        assert self.data_train is not None
        return self._loader(self.data_train, sampler=self.train_sampler(), drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        assert self.data_val is not None
        if self.split_by_shards and self._val_loader is not None:
            return self._val_loader  # a fixed set: the trainer's per-epoch reload keeps the same loader
        if len(self.data_val) == 0:
            loader: DataLoader | list = []  # Lightning skips validation without loaders
        else:
            loader = self._loader(self.data_val, shuffle=False, drop_last=False)
        if self.split_by_shards:
            self._val_loader = loader
        return loader

    # -- split by shards (stream_val_shards) -------------------------------------------------------------

    def _index_all(self) -> tuple[PairIndex, SplitReport]:
        """Every finished shard of the source, overlap-filtered, unsplit."""
        index, _, report = build_index(self.sources, self.overlap_min, self.overlap_max, val_fraction=0.0)
        return index, report

    @staticmethod
    def _subset(index: PairIndex, keep: np.ndarray) -> PairIndex:
        return PairIndex(readers=index.readers, shard=index.shard[keep], local=index.local[keep],
                         source=index.source[keep], overlap=index.overlap[keep])  # fmt: skip

    def _setup_by_shards(self) -> None:
        """Validation: the first ``stream_val_shards`` shards (all their pairs in the overlap range); training is
        chosen per epoch by ``_update_train_shards``."""
        index, report = self._index_all()
        names = [reader.path.name for reader in index.readers]
        self._check_enough_shards(names)
        count = self.stream_val_shards
        assert count is not None
        self._val_shards = names[:count]
        val_ids = np.arange(count)
        self._val_scenes = np.unique(np.concatenate([np.asarray(index.readers[i].scene) for i in val_ids]))
        val = self._subset(index, np.isin(index.shard, val_ids))
        for reader in index.readers:
            try:
                self.train_transform.check_source_size(*reader.resolution)
            except ValueError as error:
                raise ShardError(f"{reader.path}: {error}") from None
        if len(val) == 0:
            raise ShardError(
                f"{self.sources[0].path}: no validation pairs with overlap in [{self.overlap_min}, "
                f"{self.overlap_max}] in the first {count} shards (data.stream_val_shards)"
            )
        self.report = report
        self.data_val = PairDataset(val, self.val_transform, split="val", seed=self.seed,
                                    max_bad_fraction=self.max_bad_fraction,
                                    decode_on_device=self.decode_on_device)  # fmt: skip
        self._update_train_shards(index)

    def _recorded_shards(self, epoch: int) -> list[str] | None:
        """The training shards a checkpoint says ``epoch`` used."""
        chosen = None
        for first_epoch, names in self.shard_history:
            if first_epoch <= epoch:
                chosen = names
        return chosen

    def _update_train_shards(self, index: PairIndex | None = None) -> bool:
        """Train on the shards finished by now (or, resuming inside an epoch, on those that epoch used); True
        when the training set changed."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        position = self._resume_position
        recorded = None
        if position is not None and position.get("batches", 0) > 0:
            recorded = self._recorded_shards(int(position["epoch"]))
        if index is None:
            if recorded is None and self.background is None and self.data_train is not None:
                return False  # nothing is being generated: the shards of the last epoch are all there are
            index, _ = self._index_all()
        names = [reader.path.name for reader in index.readers]
        available = [name for name in names if name not in self._val_shards]
        if recorded is not None:
            missing = sorted(set(recorded) - set(available))
            if missing:
                raise ShardError(
                    f"{self.sources[0].path}: the checkpoint's epoch {position['epoch']} trained on {missing[0]} "  # type: ignore[index]
                    f"({len(missing)} shard(s) missing); restore them to resume exactly, or start fresh"
                )
            available = list(recorded)
        if available == self.train_shards and self.data_train is not None:
            return False
        allowed = np.isin(np.asarray(names), available)
        keep = allowed[index.shard]
        assert self._val_scenes is not None
        for shard_id in np.flatnonzero(allowed):  # scenes of the validation shards never train
            rows = np.flatnonzero(keep & (index.shard == shard_id))
            scenes = np.asarray(index.readers[shard_id].scene)[index.local[rows]]
            keep[rows[np.isin(scenes, self._val_scenes)]] = False
        train = self._subset(index, keep)
        if len(train) == 0:
            raise ShardError(
                f"{self.sources[0].path}: no training pairs with overlap in [{self.overlap_min}, "
                f"{self.overlap_max}] in {len(available)} training shard(s)"
            )
        if self.data_train is not None:
            self._bad_before += self.data_train.bad_pairs
        self.data_train = PairDataset(train, self.train_transform, split="train", seed=self.seed,
                                      max_bad_fraction=self.max_bad_fraction,
                                      decode_on_device=self.decode_on_device)  # fmt: skip
        self.train_shards = available
        if not self.shard_history or self.shard_history[-1][1] != available:
            self.shard_history.append((epoch, available))
        if self.epoch_pairs is None:
            self.epoch_pairs = self._plan_epoch_pairs(train, index)
        self._log_progress(epoch, len(train))
        return True

    def _plan_epoch_pairs(self, train: PairIndex, index: PairIndex) -> int:
        """The run's epoch length: ``pairs_per_epoch``, else one pass over the training pairs of the complete
        folder, estimated while it is incomplete (the planned pairs outside the validation shards, times the share
        of the finished training shards' pairs that passes the overlap filter and the scene split)."""
        if self.pairs_per_epoch:
            return int(self.pairs_per_epoch)
        assert self.generate_if_missing is not None
        planned = planned_output(self.generate_if_missing)
        if planned is None or len(self.train_shards) + len(self._val_shards) >= planned.shards:
            return len(train)
        val_ids = [i for i, r in enumerate(index.readers) if r.path.name in self._val_shards]
        train_ids = [i for i, r in enumerate(index.readers) if r.path.name in self.train_shards]
        val_pairs = sum(len(index.readers[i]) for i in val_ids)
        seen = sum(len(index.readers[i]) for i in train_ids)
        estimate = max(len(train), round((planned.pairs - val_pairs) * len(train) / max(seen, 1)))
        log.info(
            "an epoch is %d training pairs for the whole run: %d planned pairs outside the validation shards x "
            "%.3f, the share of the %d finished training pairs that pass the overlap filter", estimate,
            planned.pairs - val_pairs, len(train) / max(seen, 1), seen,
        )  # fmt: skip
        return estimate

    def _log_progress(self, epoch: int, pairs: int) -> None:
        planned = planned_output(self.generate_if_missing) if self.generate_if_missing is not None else None
        total = planned.shards - len(self._val_shards) if planned is not None else None
        shards = f"{len(self.train_shards)}/{total}" if total is not None else f"{len(self.train_shards)}"
        count = len(self._val_shards)
        val = f"validation: the first {f'{count} shards' if count > 1 else 'shard'}, {len(self.data_val or [])} pairs"
        if self.background is not None and self.background.running:
            log.info(
                "epoch %d: training on %s shards (%d pairs; %s) while generation continues in the background, "
                "pid %d (progress: %s)", epoch, shards, pairs, val, self.background.pid, self.background.log_path,
            )  # fmt: skip
        else:
            log.info("epoch %d: training on %s shards (%d pairs; %s)", epoch, shards, pairs, val)

    def check_background(self) -> None:
        """Raise the background generation's one-line failure; log once when it has finished."""
        if self.background is None:
            return
        failure = self.background.failure()
        if failure is not None:
            raise RuntimeError(failure)
        if self.background.returncode == 0 and not self._announced_end:
            self._announced_end = True
            log.info("background generation finished: %d shards in %s (the next epoch trains on all of them)",
                     len(finished_shards(self.sources[0].path)), self.sources[0].path)  # fmt: skip

    def close(self) -> None:
        """Stop a background generation that is still running (it keeps its finished shards and resumes on the
        next launch)."""
        if self.background is not None and self.background.running:
            self.background.stop()
            done = len(finished_shards(self.sources[0].path))
            log.info("stopped the background generation of %s at %d finished shards; the next launch resumes it",
                     self.sources[0].path, done)  # fmt: skip

    # -- batches -----------------------------------------------------------------------------------------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``decode_on_device``: decode the batch's JPEGs straight onto the training device (the encoded
        bytes must be on the CPU for ``decode_jpeg``, so this runs before the transfer)."""
        if not (isinstance(batch, dict) and "img1_jpeg" in batch):
            return batch
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return decode_views_on(device, batch, self.val_transform)  # crops only: the same for both splits

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Colour jitter + ImageNet normalisation, batched on the training device (see transforms.finish_batch).
        Also where a failed background generation stops training, within a batch of failing."""
        self.check_background()
        return finish_batch(batch)

    @property
    def bad_pairs(self) -> int:
        """Corrupt pairs found so far, summed over splits and all DataLoader workers."""
        current = sum(d.bad_pairs for d in (self.data_train, self.data_val) if d is not None and len(d))
        return self._bad_before + current

    def teardown(self, stage: str | None = None) -> None:
        if self.bad_pairs:
            log.warning("%d corrupt pairs were skipped during %s", self.bad_pairs, stage)
        if stage == "fit":
            self.close()

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
        if self.split_by_shards:
            state["epoch_pairs"] = self.epoch_pairs
            state["shard_history"] = [[epoch, list(names)] for epoch, names in self.shard_history]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")
        if self.split_by_shards and "shard_history" in state_dict:
            self.epoch_pairs = state_dict.get("epoch_pairs")
            self.shard_history = [(int(epoch), list(names)) for epoch, names in state_dict["shard_history"]]
