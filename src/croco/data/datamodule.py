"""``PairDataModule``: weighted shard folders -> overlap-filtered, scene-split, augmented pair batches.

Data flow: shard folders (``croco.data.shards``) are indexed once in ``setup`` (only the small per-pair
index: overlap, scene, byte offsets); pairs whose overlap lies outside ``[overlap_min, overlap_max]`` are
dropped and the rest split into train / val by a hash of the scene id, so no scene is seen in both.
Each epoch, ``EpochPairSampler`` draws ``pairs_per_epoch`` pairs from the sources in proportion to their
weights (without replacement inside a source while it lasts) and a seed per sample; as a plain map-style
sampler it is sharded by Lightning's ``DistributedSamplerWrapper`` under DDP. Workers fetch whole batches
(``PairDataset.__getitems__``): read, decode and crop in uint8, crops copied straight into shared-memory batch
tensors; colour jitter and normalisation run batched in ``on_after_batch_transfer`` on the training device.

Corrupt images inside healthy shards are skipped and replaced by another pair, marked in a bitmap shared by
all workers (``bad_pairs``), logged with file and index, and turn into an error once more than
``max_bad_fraction`` of a split is bad.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from croco.data.shards import CorruptPairError, ShardError, ShardReader, list_shards
from croco.data.transforms import PairTransform, finish_batch, parse_transforms

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 16  # consecutive corrupt pairs tried before giving up on one sample


class CorruptDataError(RuntimeError):
    """More than ``max_bad_fraction`` of a split could not be decoded."""


@dataclass(frozen=True)
class PairSource:
    """One shard folder and its relative share of each training epoch."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, entry: Any) -> PairSource:
        """Accept ``{path, weight}`` mappings (Hydra) or bare paths (weight 1)."""
        if isinstance(entry, PairSource):
            return entry
        if isinstance(entry, (str, Path)):
            return cls(Path(entry))
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"path", "weight"}
            if "path" not in entry or unknown:
                raise ValueError(f"data source {dict(entry)!r}: expected keys path and optional weight")
            weight = float(entry.get("weight", 1.0))
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(
                    f"data source {entry['path']}: weight must be a finite number >= 0, got {weight}"
                )
            return cls(Path(str(entry["path"])), weight)
        raise ValueError(f"data source {entry!r}: expected a path or a {{path, weight}} mapping")


def is_val_scene(scene: str, val_fraction: float) -> bool:
    """Deterministic scene-level split: a stable 64-bit hash of the scene id, mapped to [0, 1)."""
    digest = hashlib.blake2b(scene.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


@dataclass
class PairIndex:
    """The pairs of one split: which reader and which row, from which source, with what overlap."""

    readers: list[ShardReader]
    shard: np.ndarray  # (n,) index into readers
    local: np.ndarray  # (n,) row inside the shard
    source: np.ndarray  # (n,) index into the source list
    overlap: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.shard)

    def scene(self, pair: int) -> str:
        return self.readers[self.shard[pair]].scene[self.local[pair]]

    def location(self, pair: int) -> str:
        return f"{self.readers[self.shard[pair]].path} pair {self.local[pair]}"


@dataclass
class SplitReport:
    """What ``setup`` found, logged once and kept on the DataModule (``datamodule.report``)."""

    shards: int = 0
    pairs: int = 0
    train: int = 0
    val: int = 0
    dropped_train: int = 0  # outside the overlap range
    dropped_val: int = 0
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        summary = (
            f"{self.pairs} pairs in {self.shards} shards: train {self.train}, val {self.val} "
            f"(overlap filter dropped {self.dropped_train} train / {self.dropped_val} val pairs)"
        )
        out = [summary]
        out += [f"  {name}: {counts}" for name, counts in self.per_source.items()]
        return out


def build_index(
    sources: Sequence[PairSource], overlap_min: float, overlap_max: float, val_fraction: float
) -> tuple[PairIndex, PairIndex, SplitReport]:
    """Open every shard of every source and split its pairs into (train, val) by scene, overlap-filtered."""
    readers: list[ShardReader] = []
    columns: dict[str, dict[str, list[np.ndarray]]] = {
        split: {"shard": [], "local": [], "source": [], "overlap": []} for split in ("train", "val")
    }
    report = SplitReport()
    val_of_scene: dict[str, bool] = {}
    for source_id, source in enumerate(sources):
        counts = {"shards": 0, "pairs": 0, "train": 0, "val": 0, "dropped": 0}
        for path in list_shards(source.path):
            reader = ShardReader(path)
            shard_id = len(readers)
            readers.append(reader)
            is_val = np.fromiter(
                (val_of_scene.setdefault(s, is_val_scene(s, val_fraction)) for s in reader.scene),
                dtype=bool,
                count=len(reader),
            )
            in_range = (reader.overlap >= overlap_min) & (reader.overlap <= overlap_max)
            counts["shards"] += 1
            counts["pairs"] += len(reader)
            counts["dropped"] += int((~in_range).sum())
            report.dropped_train += int((~in_range & ~is_val).sum())
            report.dropped_val += int((~in_range & is_val).sum())
            for split, members in (("train", ~is_val & in_range), ("val", is_val & in_range)):
                rows = np.flatnonzero(members)
                counts[split] += len(rows)
                columns[split]["shard"].append(np.full(len(rows), shard_id, dtype=np.int32))
                columns[split]["local"].append(rows.astype(np.int64))
                columns[split]["source"].append(np.full(len(rows), source_id, dtype=np.int16))
                columns[split]["overlap"].append(reader.overlap[rows])
        report.shards += counts["shards"]
        report.pairs += counts["pairs"]
        report.per_source[str(source.path)] = counts

    def assemble(split: str) -> PairIndex:
        parts = columns[split]
        empty = {"shard": np.int32, "local": np.int64, "source": np.int16, "overlap": np.float32}
        arrays = {
            key: np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype=empty[key]) for key in empty
        }
        return PairIndex(readers=readers, **arrays)

    train, val = assemble("train"), assemble("val")
    report.train, report.val = len(train), len(val)
    return train, val, report


class PairDataset(Dataset):
    """Map-style dataset over one split's pairs; items are uint8 views plus their jitter parameters.

    An item key is either a pair number (deterministic per-sample randomness from ``seed``) or a
    ``(pair, sample_seed)`` tuple as yielded by ``EpochPairSampler``. Corrupt pairs are replaced by the next
    readable pair and marked in a shared bitmap; the error threshold is ``max_bad_fraction`` of the split.
    """

    def __init__(
        self,
        index: PairIndex,
        transform: PairTransform,
        *,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        split: str = "train",
    ) -> None:
        self.index = index
        self.transform = transform
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.split = split
        # One byte per pair in shared memory: workers mark bad pairs, everybody can count them.
        self.bad = torch.zeros(max(len(index), 1), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def bad_pairs(self) -> int:
        return int(self.bad.sum())

    def _record_bad(self, pair: int, error: CorruptPairError) -> None:
        self.bad[pair] = 1
        bad = self.bad_pairs
        log.warning("skipping corrupt pair (%d bad in %s split so far): %s", bad, self.split, error)
        if bad > self.max_bad_fraction * len(self):
            raise CorruptDataError(
                f"{bad} of {len(self)} {self.split} pairs are corrupt, more than max_bad_fraction="
                f"{self.max_bad_fraction}; last: {error}"
            )

    def load(
        self, pair: int, rng: random.Random, buffers: tuple[np.ndarray, np.ndarray] | None = None
    ) -> dict:
        """Read, decode and transform one pair (raises CorruptPairError on a damaged image).

        With ``buffers`` the images are decoded into them and the returned views are only valid until the
        next call (``__getitems__`` copies them into the batch at once).
        """
        reader = self.index.readers[self.index.shard[pair]]
        row = int(self.index.local[pair])
        encoded1, encoded2 = reader.encoded_images(row)
        first, second = buffers if buffers is not None else (None, None)
        image1 = reader.decode(encoded1, row, "image1", first)
        image2 = reader.decode(encoded2, row, "image2", second)
        sample = self.transform(image1, image2, rng)
        sample["overlap"] = float(self.index.overlap[pair])
        sample["scene"] = reader.scene[row]
        sample["pair"] = pair
        return sample

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self._sample(key, buffers=None)

    def _sample(self, key: int | tuple[int, int], buffers: tuple[np.ndarray, np.ndarray] | None) -> dict:
        if isinstance(key, tuple):
            pair, sample_seed = int(key[0]), int(key[1])
        else:
            pair = int(key)
            sample_seed = self.seed * 1_000_003 + pair
        if not 0 <= pair < len(self):
            raise IndexError(f"pair {pair} out of range for the {len(self)} {self.split} pairs")
        rng = random.Random(sample_seed)
        for attempt in range(MAX_SUBSTITUTES):
            candidate = (pair + attempt) % len(self)
            if self.bad[candidate]:
                continue
            try:
                return self.load(candidate, rng, buffers)
            except CorruptPairError as error:
                self._record_bad(candidate, error)
        raise CorruptDataError(
            f"{MAX_SUBSTITUTES} consecutive {self.split} pairs from {self.index.location(pair)} are corrupt"
        )

    def _decode_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """Two reusable decode targets of this process, sized for the largest shard resolution."""
        buffers = getattr(self, "_buffers", None)
        if buffers is None:
            size = max((3 * r.resolution[0] * r.resolution[1] for r in self.index.readers), default=0)
            buffers = (np.empty(size, dtype=np.uint8), np.empty(size, dtype=np.uint8))
            self._buffers = buffers
        return buffers

    def __getitems__(self, keys: list) -> dict[str, Any]:
        """A whole collated batch (the DataLoader's batched fetch): each pair is decoded into reused buffers and
        its crops are copied straight into the batch tensors, allocated in shared memory inside a worker.

        Same samples as ``[self[k] for k in keys]`` collated, with one full-image copy fewer per view.
        """
        buffers = self._decode_buffers()
        height, width = self.transform.spec.crop
        views = {name: _batch_tensor((len(keys), height, width, 3)) for name in ("img1", "img2")}
        rest = []
        for row, key in enumerate(keys):
            sample = self._sample(key, buffers)
            for name, batch in views.items():
                batch[row].copy_(sample.pop(name))
            rest.append(sample)
        collated = default_collate(rest)
        collated.update(views)
        return collated

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_buffers", None)  # per process
        return state


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in shared memory inside a DataLoader worker, as ``default_collate``
    allocates its outputs, so that the batch is not copied again on its way to the main process."""
    if get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(math.prod(shape))
            return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        except (AttributeError, RuntimeError):  # private API moved: still correct, one copy more
            pass
    return torch.empty(shape, dtype=torch.uint8)


def collate_pairs(batch: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: ``PairDataset.__getitems__`` already returns a collated batch; lists of
    samples (per-item fetching) go through ``default_collate``."""
    return batch if isinstance(batch, dict) else default_collate(batch)


class EpochPairSampler(Sampler):
    """Draw each epoch's pairs by source weight, deterministic in (seed, epoch), with a seed per sample.

    ``pairs_per_epoch`` slots are shared among sources in proportion to their weights (largest remainder);
    inside a source pairs are taken from successive random permutations, so every pair is seen once before
    any repeats. The result is shuffled and yielded as ``(pair, sample_seed)``. Lightning shards it across
    ranks with ``DistributedSamplerWrapper`` (which forwards ``set_epoch``); without ``set_epoch`` calls the
    epoch is the number of completed passes.
    """

    def __init__(
        self, source: np.ndarray, weights: Sequence[float], pairs_per_epoch: int | None = None, seed: int = 0
    ) -> None:
        self.source = np.asarray(source)
        sizes = (
            np.bincount(self.source, minlength=len(weights)) if len(self.source) else np.zeros(len(weights))
        )
        effective = np.asarray(weights, dtype=np.float64) * (sizes > 0)
        if len(self.source) == 0 or effective.sum() <= 0:
            raise ValueError(
                "no training pairs to sample from (check the sources, weights and overlap range)"
            )
        self.weights = effective / effective.sum()
        self.members = [np.flatnonzero(self.source == s) for s in range(len(weights))]
        self.pairs_per_epoch = int(pairs_per_epoch) if pairs_per_epoch else len(self.source)
        if self.pairs_per_epoch <= 0:
            raise ValueError(f"pairs_per_epoch must be positive, got {pairs_per_epoch}")
        self.seed = seed
        self.epoch: int | None = None
        self._passes = 0
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, start: int) -> None:
        """Make the next pass continue ``epoch`` after its first ``start`` samples (a mid-epoch resume).

        The consumed samples move to the end instead of disappearing, so the length does not change: under
        DDP, where rank r reads every world_size-th sample, dropping ``k * batch * world_size`` samples from the
        front gives every rank its own batches from k on; the trainer stops the epoch before the moved ones."""
        self._resume = (int(epoch), int(start))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def quotas(self) -> np.ndarray:
        """Slots per source this epoch (largest-remainder rounding of weight * pairs_per_epoch)."""
        exact = self.weights * self.pairs_per_epoch
        quotas = np.floor(exact).astype(np.int64)
        remainder = self.pairs_per_epoch - quotas.sum()
        quotas[np.argsort(-(exact - quotas), kind="stable")[:remainder]] += 1
        return quotas

    def epoch_keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(pairs, sample seeds) of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        chosen = []
        for members, quota in zip(self.members, self.quotas()):
            if quota == 0:
                continue
            rounds = -(-quota // len(members))
            chosen.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:quota])
        pairs = rng.permutation(np.concatenate(chosen))
        seeds = rng.integers(0, 2**62, size=len(pairs))
        return pairs, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = 0
        if self._resume is not None:  # the epoch is known before the trainer's set_epoch of this pass
            (self.epoch, start), self._resume = self._resume, None
        epoch = self.epoch if self.epoch is not None else self._passes
        pairs, seeds = self.epoch_keys(epoch)
        if 0 < start < len(pairs):
            pairs, seeds = np.roll(pairs, -start), np.roll(seeds, -start)
        self._passes += 1
        return iter(zip(pairs.tolist(), seeds.tolist()))


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
        generate_if_missing: kwargs of ``croco.data.generate.generate_pairs``; if set, ``prepare_data``
            generates into every source folder that holds no shard yet.
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
        generate_if_missing: Mapping[str, Any] | None = None,
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(sources, (str, Path, Mapping)):
            sources = [sources]
        self.sources = [PairSource.parse(entry) for entry in sources]
        if not self.sources:
            raise ValueError("PairDataModule needs at least one source folder")
        size = (
            (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
        )
        self.spec = parse_transforms(transforms, size)  # type: ignore[arg-type]
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
        self.generate_if_missing = dict(generate_if_missing) if generate_if_missing else None
        self.max_bad_fraction = float(max_bad_fraction)
        self.data_train: PairDataset | None = None
        self.data_val: PairDataset | None = None
        self.report: SplitReport | None = None

    # -- preparation ------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the embedded dataset into empty source folders (once per node, before ``setup``)."""
        if self.generate_if_missing is None:
            return
        for source in self.sources:
            try:
                list_shards(source.path)
                continue
            except ShardError:
                pass
            from croco.data.generate import generate_pairs  # heavy (renderer); only imported when needed

            log.info("no shards in %s: generating %s", source.path, self.generate_if_missing)
            generate_pairs(source.path, **self.generate_if_missing)

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
