"""``BinocularDataModule``: stereo / optical-flow / relative-pose data of CroCo v2's binocular tasks.

``source`` picks the dataset classes (``SOURCES``), ``target`` the ground truth, and the official
augmentations of ``croco.data.stereoflow_transforms`` make fixed-size training samples (``StereoAugmentor``,
``FlowAugmentor``, ``PoseAugmentor``); validation and test use ``EvalTransform`` (a centre crop of
``val_crop_size``, or full images). Batches are plain dicts (default collate): ``img1`` / ``img2``
(B, 3, H, W) float32 normalised, then ``disparity`` (B, 1, H, W) / ``flow`` (B, 2, H, W) (+inf = invalid),
or ``rotation`` (B, 3, 3), ``translation`` (B, 3) unit, ``translation_norm`` (B,); ``name`` (list of str).

The official CroCo-Stereo/Flow training sets are weighted mixtures (``"40*MPISintel + 4*FlyingThings + ..."``,
evaluated as Python in naver/croco ``stereoflow/datasets_flow.py``). Here ``source`` may instead be a list of
``{name, root, repeat}`` mappings (plus dataset options such as ``pass_`` or ``val_frames``): the training set
is the ``torch.utils.data.ConcatDataset`` of each source repeated ``repeat`` times; validation and test
concatenate each source's held-out split once. Nothing is evaluated as code.

As for the other data modules, the module does not know where synthetic shards come from:
``generate_if_missing`` is any callable that fills an empty folder (the configs pass the embedded generator
with the matching ``task``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from croco.data.splits import SplitDataModule, fill_if_empty
from croco.data.stereoflow import (
    TARGETS,
    BinocularDataset,
    FlyingChairs,
    KittiFlow,
    KittiStereo,
    Middlebury,
    SceneFlowStereo,
    SintelFlow,
    SyntheticFlow,
    SyntheticPose,
    SyntheticStereo,
)
from croco.data.stereoflow_transforms import EvalTransform, FlowAugmentor, PoseAugmentor, StereoAugmentor
from croco.utils.sizes import as_hw

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "BinocularDataModule", "SourceEntry", "SourceSpec", "allowed_combinations"]


@dataclass(frozen=True)
class SourceSpec:
    """One source: the dataset class of each target it supports and fixed constructor options (the year)."""

    datasets: Mapping[str, type[BinocularDataset]]
    options: Mapping[str, Any] = field(default_factory=dict)
    synthetic: bool = False

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.datasets)


SOURCES: dict[str, SourceSpec] = {
    "synthetic": SourceSpec(
        {"stereo": SyntheticStereo, "flow": SyntheticFlow, "pose": SyntheticPose}, synthetic=True
    ),
    "middlebury": SourceSpec({"stereo": Middlebury}),
    "kitti2012": SourceSpec({"stereo": KittiStereo, "flow": KittiFlow}, {"year": 2012}),
    "kitti2015": SourceSpec({"stereo": KittiStereo, "flow": KittiFlow}, {"year": 2015}),
    "sceneflow": SourceSpec({"stereo": SceneFlowStereo}),
    "sintel": SourceSpec({"flow": SintelFlow}),
    "flyingchairs": SourceSpec({"flow": FlyingChairs}),
}


def allowed_combinations() -> list[str]:
    """``source/target`` pairs the module accepts, e.g. ``kitti2015/flow``."""
    return [f"{name}/{target}" for name, spec in SOURCES.items() for target in spec.targets]


@dataclass(frozen=True)
class SourceEntry:
    """One member of the training mixture: a source name, its root, a repetition count and dataset options."""

    name: str
    root: Path
    repeat: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> SourceSpec:
        return SOURCES[self.name]


_MODULE_ARGUMENTS = frozenset({"self", "root", "folder", "split", "transform"})
"""Dataset constructor arguments the module sets itself (a source entry's extra keys may not)."""


def _parse_entries(source: Any, root: Any, target: str) -> list[SourceEntry]:
    """``source`` (a name, or a list of ``{name, root, repeat, **options}``) -> checked entries."""
    if isinstance(source, str):
        raw_entries: list[Any] = [{"name": source, "root": root}]
    elif isinstance(source, Mapping):
        raw_entries = [source]
    elif isinstance(source, Sequence):
        raw_entries = list(source)
        if not raw_entries:
            raise ValueError(
                "data.source: empty list; expected a source name or {name, root, repeat} mappings"
            )
    else:
        raise TypeError(f"data.source={source!r}: expected a source name or a list of {{name, root, repeat}}")
    entries = []
    for i, entry in enumerate(raw_entries):
        key = "data.source" if isinstance(source, str) else f"data.source[{i}]"
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(
                f"{key}={entry!r}: expected a mapping with keys name, root, repeat (and options)"
            )
        options = {k: v for k, v in entry.items() if k not in ("name", "root", "repeat")}
        name = str(entry["name"])
        if f"{name}/{target}" not in allowed_combinations():
            raise ValueError(
                f"{key}: source={name!r}, target={target!r}: expected one of {allowed_combinations()}"
            )
        entry_root = entry.get("root", root)
        if entry_root is None:
            raise ValueError(f"{key}: no root for source {name!r}; give data.root or a root in the entry")
        repeat = entry.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"{key}.repeat={repeat!r}: expected an integer >= 1")
        cls = SOURCES[name].datasets[target]
        accepted = set(inspect.signature(cls.__init__).parameters) - _MODULE_ARGUMENTS
        accepted -= set(SOURCES[name].options) | {"val_fraction"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"{key}: unknown option(s) {unknown} for {cls.__name__}; expected {sorted(accepted)}"
            )
        entries.append(SourceEntry(name, Path(str(entry_root)), repeat, options))
    return entries


class BinocularDataModule(SplitDataModule):
    """Train / val / test loaders of stereo, optical-flow or relative-pose pairs.

    Args:
        source: ``synthetic`` (the embedded generator's shards), ``middlebury``, ``kitti2012``, ``kitti2015``,
            ``sceneflow``, ``sintel`` or ``flyingchairs``; or a list of ``{name, root, repeat}`` mappings
            (with dataset options such as ``pass_``) whose training splits are concatenated, each repeated.
        root: the dataset's folder (the shard folder for ``synthetic``); the default root of list entries.
        target: ``stereo``, ``flow`` or ``pose`` (see ``allowed_combinations()``).
        crop_size: training crop (int or [height, width]).
        batch_size: per device. ``num_workers``, ``pin_memory``, ``persistent_workers``: DataLoader settings.
        val_fraction: share of synthetic *scenes* held out (other sources have fixed held-out splits).
        generate_if_missing: ``f(folder)`` that fills an empty synthetic folder (called by ``prepare_data``).
        limit_val_samples: keep only the first N validation samples (short CPU validation); None: all.
        val_crop_size: centre crop for validation / test; None: full images (then images of different sizes
            cannot share a batch: use batch_size 1 or a crop for such sources).
    """

    def __init__(
        self,
        source: str | Sequence[Mapping[str, Any]],
        root: str | Path | None,
        target: str,
        crop_size: int | Sequence[int],
        batch_size: int = 6,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        generate_if_missing: Callable[[Path], Any] | None = None,
        limit_val_samples: int | None = None,
        val_crop_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"data.target={target!r}: expected one of {list(TARGETS)}")
        self.target = str(target)
        self.entries = _parse_entries(source, root, self.target)
        self.source = source if isinstance(source, str) else [entry.name for entry in self.entries]
        self.root = self.entries[0].root
        self.crop_size = as_hw(crop_size, "data.crop_size")
        self.val_crop_size = None if val_crop_size is None else as_hw(val_crop_size, "data.val_crop_size")
        self._set_loading(batch_size, num_workers, val_fraction, pin_memory, persistent_workers, generate_if_missing,
                          limit_val_samples)  # fmt: skip
        augmentors = {"stereo": StereoAugmentor, "flow": FlowAugmentor, "pose": PoseAugmentor}
        self.train_transform = augmentors[self.target](self.crop_size)
        self.eval_transform = EvalTransform(self.val_crop_size)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None

    # -- datasets ---------------------------------------------------------------------------------------

    def _dataset(self, entry: SourceEntry, split: str, transform: Callable) -> BinocularDataset:
        spec = entry.spec
        cls = spec.datasets[self.target]
        options = {**spec.options, **entry.options}
        if spec.synthetic:
            options["val_fraction"] = self.val_fraction
        return cls(entry.root, split, transform=transform, **options)

    def build_split(self, split: str) -> Dataset:
        """Training: the concatenation of every source, each ``repeat`` times; val / test: each source once."""
        repeat = split == "train"
        transform = self.train_transform if repeat else self.eval_transform
        parts: list[Dataset] = []
        for entry in self.entries:
            dataset = self._dataset(entry, split, transform)
            log.info("%s/%s %s: %d pairs (x%d)", entry.name, self.target, split, len(dataset),
                     entry.repeat if repeat else 1)  # fmt: skip
            parts += [dataset] * (entry.repeat if repeat else 1)
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def prepare_data(self) -> None:
        """Generate synthetic shards into empty folders (once per node, before ``setup``)."""
        for entry in self.entries:
            if entry.spec.synthetic:
                fill_if_empty(entry.root, self.generate_if_missing)
