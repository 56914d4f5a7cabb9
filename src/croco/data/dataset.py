"""``PairDataset``: one split's pairs read from shards, decoded and cropped in uint8, batch by batch.

Workers fetch whole batches (``PairDataset.__getitems__``): read, decode and crop in uint8, crops copied
straight into shared-memory batch tensors; colour jitter and normalisation run later, batched on the training
device (``croco.data.transforms.finish_batch``). Corrupt images inside healthy shards (undecodable, cut off,
or not matching their stored checksum: ``ShardReader.encoded_images``) are skipped and replaced by another
pair, marked in a bitmap shared by all workers (``bad_pairs``), logged with file and index, and turn into an
error once more than ``max_bad_fraction`` of a split is bad.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from croco.data.index import PairIndex
from croco.data.shards import JPEG_SOI, CorruptPairError
from croco.data.transforms import PairTransform

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 16  # consecutive corrupt pairs tried before giving up on one sample


class CorruptDataError(RuntimeError):
    """More than ``max_bad_fraction`` of a split could not be decoded."""


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
        decode_on_device: bool = False,
    ) -> None:
        self.index = index
        self.transform = transform
        self.decode_on_device = decode_on_device
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
        if self.decode_on_device:
            sample = self._encoded_views(reader, row, (encoded1, encoded2), rng)
        else:
            first, second = buffers if buffers is not None else (None, None)
            image1 = reader.decode(encoded1, row, "image1", first)
            image2 = reader.decode(encoded2, row, "image2", second)
            sample = self.transform(image1, image2, rng)
        sample["overlap"] = float(self.index.overlap[pair])
        sample["scene"] = reader.scene[row]
        sample["pair"] = pair
        return sample

    def _encoded_views(self, reader: Any, row: int, encoded: tuple[bytes, bytes], rng: random.Random) -> dict:
        """A pair left encoded, for ``decode_views_on``: the JPEG bytes and the crop boxes drawn now."""
        for name, data in zip(("image1", "image2"), encoded, strict=True):
            if data[:2] != JPEG_SOI:
                raise CorruptPairError(f"{reader.path}: pair {row} {name}: not a JPEG (data.decode_on_device=true "
                                       "decodes JPEGs only)")  # fmt: skip
        plan = self.transform.plan(reader.resolution, reader.resolution, rng)
        sample: dict[str, Any] = {
            "img1_jpeg": torch.frombuffer(bytearray(encoded[0]), dtype=torch.uint8),
            "img2_jpeg": torch.frombuffer(bytearray(encoded[1]), dtype=torch.uint8),
            "boxes": torch.tensor(plan.boxes, dtype=torch.int64),
        }
        if plan.jitter is not None:
            sample["jitter"] = plan.jitter
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

        Same samples as ``[self[k] for k in keys]`` collated, with one full-image copy fewer per view. With
        ``decode_on_device`` the encoded images stay lists (their lengths differ) for ``decode_views_on``.
        """
        if self.decode_on_device:
            samples = [self._sample(key, None) for key in keys]
            encoded = {name: [s.pop(name) for s in samples] for name in ("img1_jpeg", "img2_jpeg")}
            return {**default_collate(samples), **encoded}
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
