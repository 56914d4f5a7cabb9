"""``DownstreamDataModule``: monocular downstream data (depth / segmentation / classification) for Lightning.

One module for every source of ``croco.data.dense``: ``source`` picks the dataset class (``SOURCES``), ``target``
the ground truth, and ``DenseTransform`` makes fixed-size, aligned samples (random resized crop + flip +
colour jitter for training, resize + centre crop for evaluation). Batches are plain dicts (default collate):
``image`` (B, 3, H, W) float32 normalised, ``depth`` (B, 1, H, W) / ``segmentation`` (B, H, W) / ``label`` (B,),
``name`` (list of str).

As for pretraining (``croco.data.datamodule``), the module does not know where synthetic shards come from:
``generate_if_missing`` is any callable that fills an empty folder (the configs pass the embedded generator
with ``task=depth``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from croco.data.dense import ADE20K, IGNORE_INDEX, ClassFolders, DenseDataset, NYUv2, SyntheticViews
from croco.data.dense_transforms import DenseTransform
from croco.data.splits import SplitDataModule, fill_if_empty
from croco.utils.sizes import as_hw

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "DownstreamDataModule", "allowed_combinations"]

SOURCES: dict[str, type[DenseDataset]] = {
    "synthetic": SyntheticViews,
    "nyuv2": NYUv2,
    "ade20k": ADE20K,
    "folders": ClassFolders,
}
AUGMENT_KEYS: tuple[str, ...] = ("scale", "ratio", "hflip", "color_jitter")


def allowed_combinations() -> list[str]:
    """``source/target`` pairs the module accepts, e.g. ``nyuv2/depth``."""
    return [f"{source}/{target}" for source, cls in SOURCES.items() for target in cls.targets]


class DownstreamDataModule(SplitDataModule):
    """Train / val / test loaders of one monocular downstream dataset.

    Args:
        source: ``synthetic`` (task shards of the embedded generator), ``nyuv2``, ``ade20k`` or ``folders``.
        root: the dataset's folder (the shard folder for ``synthetic``).
        target: ``depth``, ``segmentation`` or ``classification`` (see ``allowed_combinations()``).
        img_size: output size (int or [height, width]).
        batch_size: per device. ``num_workers``, ``pin_memory``, ``persistent_workers``: DataLoader settings.
        val_fraction: share of synthetic *scenes* held out (other sources have official splits).
        augment: training ``DenseTransform`` options (scale, ratio, hflip, color_jitter); None: its defaults.
        generate_if_missing: ``f(folder)`` that fills an empty synthetic folder (called by ``prepare_data``).
        limit_val_samples: keep only the first N validation samples (short CPU validation); None: all.
    """

    def __init__(
        self,
        source: str,
        root: str | Path,
        target: str,
        img_size: int | Sequence[int],
        batch_size: int = 8,
        num_workers: int = 2,
        val_fraction: float = 0.04,
        augment: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        generate_if_missing: Callable[[Path], Any] | None = None,
        limit_val_samples: int | None = None,
    ) -> None:
        super().__init__()
        combination = f"{source}/{target}"
        if combination not in allowed_combinations():
            raise ValueError(
                f"data source={source!r}, target={target!r}: expected one of {allowed_combinations()}"
            )
        self.source, self.target = str(source), str(target)
        self.dataset_class = SOURCES[self.source]
        self.root = Path(str(root))
        self.img_size = as_hw(img_size, "data.img_size")
        augment = dict(augment or {})
        unknown = sorted(set(augment) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"data.augment: unknown option(s) {unknown}; expected {list(AUGMENT_KEYS)}")
        self._set_loading(batch_size, num_workers, val_fraction, pin_memory, persistent_workers, generate_if_missing,
                          limit_val_samples)  # fmt: skip
        self.train_transform = DenseTransform(self.img_size, train=True, **augment)
        self.eval_transform = DenseTransform(self.img_size, train=False)
        self.ignore_index = IGNORE_INDEX
        self.data_train: DenseDataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: DenseDataset | None = None

    # -- datasets ---------------------------------------------------------------------------------------

    def build_split(self, split: str) -> DenseDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        if self.dataset_class is SyntheticViews:
            return SyntheticViews(self.root, split, self.target, self.val_fraction, transform=transform)
        return self.dataset_class(self.root, split, transform=transform)  # type: ignore[call-arg]

    def describe(self) -> dict[str, Any]:
        """Source, target and classes, read cheaply (file attributes / folder names), before ``setup``."""
        num_classes, class_names = self.dataset_class.class_info(self.root, self.target)
        return {
            "source": self.source,
            "target": self.target,
            "root": str(self.root),
            "num_classes": num_classes,
            "class_names": class_names,
        }

    def prepare_data(self) -> None:
        """Generate the synthetic task shards into an empty folder (once per node, before ``setup``)."""
        if self.source == "synthetic":
            fill_if_empty(self.root, self.generate_if_missing)

    @property
    def _any_dataset(self) -> DenseDataset:
        for dataset in (self.data_train, self._val_full, self.data_test):
            if dataset is not None:
                return dataset
        raise RuntimeError("DownstreamDataModule: call setup() first (or describe() for the classes)")

    @property
    def num_classes(self) -> int | None:
        return self._any_dataset.num_classes

    @property
    def class_names(self) -> list[str] | None:
        return self._any_dataset.class_names
