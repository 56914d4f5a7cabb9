"""What the downstream data modules share: DataLoaders over the train / val / test splits their ``setup`` builds,
and the log description of the callable that fills an empty folder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitDataModule", "describe_callable"]


def describe_callable(fn: Callable[..., Any]) -> str:
    """``generate_pairs(task='depth', pairs=640)`` for a partial, the callable's name otherwise (for log lines)."""
    func = getattr(fn, "func", fn)
    name = getattr(func, "__qualname__", repr(func))
    keywords = getattr(fn, "keywords", None) or {}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in keywords.items())})"


class SplitDataModule(LightningDataModule):
    """Loaders of ``data_train`` / ``data_val`` / ``data_test`` (set by the subclass's ``setup``) with the
    subclass's ``batch_size``, ``num_workers``, ``pin_memory`` and ``persistent_workers``."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    data_train: Dataset | None = None
    data_val: Dataset | None = None
    data_test: Dataset | None = None

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
