"""The pair index of a set of shard folders: which pairs exist, their overlap, and the train / val split by scene.

Only the small per-pair columns are read (overlap, scene, byte offsets); pairs whose overlap lies outside
``[overlap_min, overlap_max]`` are dropped and the rest split by a hash of the scene id, so no scene is seen in
both splits.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from croco.data.shards import ShardError, ShardReader, list_shards


@dataclass(frozen=True)
class PairSource:
    """One shard folder, its relative share of each training epoch, and optionally what fills it when empty
    (``generate(folder)``; None: the data module's ``generate_if_missing``, if any)."""

    path: Path
    weight: float = 1.0
    generate: Callable[[Path], Any] | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, entry: Any) -> PairSource:
        """Accept ``{path, weight, generate}`` mappings (Hydra) or bare paths (weight 1)."""
        if isinstance(entry, PairSource):
            return entry
        if isinstance(entry, (str, Path)):
            return cls(Path(entry))
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"path", "weight", "generate"}
            if "path" not in entry or unknown:
                raise ValueError(f"data source {dict(entry)!r}: expected keys path, optional weight and generate")
            weight = float(entry.get("weight", 1.0))
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(
                    f"data source {entry['path']}: weight must be a finite number >= 0, got {weight}"
                )
            generate = entry.get("generate")
            if generate is not None and not callable(generate):
                raise ValueError(
                    f"data source {entry['path']}: generate={generate!r}: expected null or a callable that fills "
                    "the folder (a config with _target_ and _partial_: true)"
                )
            return cls(Path(str(entry["path"])), weight, generate)
        raise ValueError(f"data source {entry!r}: expected a path or a {{path, weight, generate}} mapping")


_SCANNET_RESCAN = re.compile(r"(?<![A-Za-z0-9])(scene\d{4})_\d{2}(?![0-9])")


def normalise_scene_id(scene: str) -> str:
    """The scene id that decides the train / val split, for writers of shards (the importers): ScanNet's rescan
    suffix is dropped, since ``scene0001_00`` and ``scene0001_01`` scan one room and must never straddle the
    split (also inside a path, ``scans/scene0001_01/color``); backslashes become ``/``; the rest is kept."""
    return _SCANNET_RESCAN.sub(r"\1", str(scene).replace("\\", "/").strip())


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
    unknown_overlap: int = 0  # kept whatever the overlap range: nothing says they are outside it
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        summary = (
            f"{self.pairs} pairs in {self.shards} shards: train {self.train}, val {self.val} "
            f"(overlap filter dropped {self.dropped_train} train / {self.dropped_val} val pairs"
            + (
                f"; {self.unknown_overlap} pairs of unknown overlap kept unfiltered"
                if self.unknown_overlap
                else ""
            )
            + ")"
        )
        out = [summary]
        out += [f"  {name}: {counts}" for name, counts in self.per_source.items()]
        return out


def build_index(
    sources: Sequence[PairSource],
    overlap_min: float,
    overlap_max: float,
    val_fraction: float,
    val_overlap: tuple[float, float] | None = None,
) -> tuple[PairIndex, PairIndex, SplitReport]:
    """Open every shard of every source and split its pairs into (train, val) by scene, overlap-filtered
    (the validation pairs by ``val_overlap`` = (min, max) when given, so runs trained on different overlap
    ranges are compared on the same held-out pairs).

    A pair whose overlap is unknown (NaN, e.g. an imported folder of images without geometry) is kept: the filter
    applies where the overlap is known, and the report counts the unfiltered pairs."""
    readers: list[ShardReader] = []
    columns: dict[str, dict[str, list[np.ndarray]]] = {
        split: {"shard": [], "local": [], "source": [], "overlap": []} for split in ("train", "val")
    }
    report = SplitReport()
    val_of_scene: dict[str, bool] = {}
    for source_id, source in enumerate(sources):
        counts = {"shards": 0, "pairs": 0, "train": 0, "val": 0, "dropped": 0, "unknown_overlap": 0}
        for path in list_shards(source.path):
            reader = ShardReader(path)
            shard_id = len(readers)
            readers.append(reader)
            is_val = np.fromiter(
                (val_of_scene.setdefault(s, is_val_scene(s, val_fraction)) for s in reader.scene),
                dtype=bool,
                count=len(reader),
            )
            unknown = np.isnan(reader.overlap)
            in_range = ((reader.overlap >= overlap_min) & (reader.overlap <= overlap_max)) | unknown
            if val_overlap is not None:
                in_val_range = ((reader.overlap >= val_overlap[0]) & (reader.overlap <= val_overlap[1])) | unknown
                in_range = np.where(is_val, in_val_range, in_range)
            counts["unknown_overlap"] += int(unknown.sum())
            report.unknown_overlap += int(unknown.sum())
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


def check_sources(sources: Sequence[Any], key: str = "data.sources") -> None:
    """Every source folder holds readable shards; otherwise a one-line ``ShardError`` naming the source (the
    start-up check of a run whose data must already exist)."""
    for i, entry in enumerate(sources):
        path = PairSource.parse(entry).path
        try:
            list_shards(path)
        except ShardError as error:
            raise ShardError(f"{key}[{i}].path: {error}") from None
