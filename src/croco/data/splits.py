"""What the downstream data modules share: datasets that check their target and transform raw samples, the
checks of the loader settings, DataLoaders over the train / val / test splits their ``setup`` builds, and the log
description of the callable that fills an empty folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Transform = Callable[[dict[str, Any]], dict[str, Any]]

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset

from croco.data.shards import ShardError, list_shards

__all__ = ["SplitDataModule", "TargetDataset", "describe_callable", "fill_if_empty"]

log = logging.getLogger(__name__)


def describe_callable(fn: Callable[..., Any]) -> str:
    """``generate_pairs(task='depth', pairs=640)`` for a partial, the callable's name otherwise (for log lines)."""
    func = getattr(fn, "func", fn)
    name = getattr(func, "__qualname__", repr(func))
    keywords = getattr(fn, "keywords", None) or {}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in keywords.items())})"


def fill_if_empty(folder: str | os.PathLike, generate: Callable[[Path], Any] | None) -> bool:
    """Call ``generate(folder)`` when ``folder`` holds no shard (and ``generate`` is given); True when it ran."""
    if generate is None:
        return False
    try:
        list_shards(folder)
        return False
    except ShardError:
        pass
    log.info("no shards in %s: generating them with %s", folder, describe_callable(generate))
    generate(Path(folder))
    return True


class TargetDataset(Dataset):
    """A dataset of one of the ``targets`` a subclass supports: ``raw(i)`` reads a sample, ``__getitem__``
    applies the transform to it (negative indices count from the end)."""

    targets: tuple[str, ...] = ()

    def __init__(self, target: str, transform: Transform | None) -> None:
        if target not in self.targets:
            raise ValueError(
                f"{type(self).__name__}: target={target!r} is not supported; expected one of {list(self.targets)}"
            )
        self.target = target
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> dict[str, Any]:
        """The sample before the transform: uint8 image(s), ground truth at the image's size, name."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range [0, {len(self)})")
        sample = self.raw(int(index) % len(self))
        return self.transform(sample) if self.transform is not None else sample


class SplitDataModule(LightningDataModule):
    """The splits of one ``source`` / ``target`` (``build_split``, supplied by the subclass) and their loaders.

    ``setup`` builds what a stage needs (idempotent): fit = train + val, validate = val, test / predict = the
    held-out split; ``limit_val_samples`` keeps the first validation samples (short CPU validation)."""

    source: str
    target: str
    root: Path

    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    data_train: Dataset | None = None
    data_val: Dataset | None = None
    data_test: Dataset | None = None
    _val_full: Dataset | None = None  # data_val before limit_val_samples

    def build_split(self, split: str) -> Dataset:
        """The dataset of ``split`` (train / val / test) with its transform."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.data_train is None:
            self.data_train = self.build_split("train")
            if len(self.data_train) == 0:
                raise ValueError(f"{self.root}: no training samples for {self.source}/{self.target}")
            log.info("%s/%s train: %d samples", self.source, self.target, len(self.data_train))
        if stage in (None, "fit", "validate") and self.data_val is None:
            val = self._val_full = self.build_split("val")
            self.data_val = val
            if self.limit_val_samples is not None and len(val) > self.limit_val_samples:
                log.info("validation limited to the first %d of %d samples", self.limit_val_samples, len(val))
                self.data_val = Subset(val, range(self.limit_val_samples))
            if len(val) == 0:
                log.warning("%s/%s: the validation split is empty", self.source, self.target)
        if stage in ("test", "predict") and self.data_test is None:
            self.data_test = self.build_split("test")

    def _set_loading(
        self, batch_size: int, num_workers: int, val_fraction: float, pin_memory: bool, persistent_workers: bool,
        generate_if_missing: Callable[..., Any] | None, limit_val_samples: int | None,
    ) -> None:  # fmt: skip
        """Check and store the settings every downstream data module takes (one-line errors naming the key)."""
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size}: expected >= 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction}: expected a fraction in [0, 1)")
        if limit_val_samples is not None and limit_val_samples < 1:
            raise ValueError(f"data.limit_val_samples={limit_val_samples}: expected null or >= 1")
        if generate_if_missing is not None and not callable(generate_if_missing):
            raise ValueError(
                f"data.generate_if_missing={generate_if_missing!r}: expected null or a callable that fills a "
                "folder (a config with _target_ and _partial_: true)"
            )
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.generate_if_missing = generate_if_missing
        self.limit_val_samples = limit_val_samples

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.data_train is not None
        # drop the last partial batch only when there is a full one (tiny debug datasets still train)
        return self._loader(self.data_train, shuffle=True, drop_last=len(self.data_train) >= self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        assert self.data_val is not None
        if len(self.data_val) == 0:
            return []  # Lightning skips validation without loaders
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        assert self.data_test is not None
        return self._loader(self.data_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
