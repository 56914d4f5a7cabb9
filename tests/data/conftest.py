"""Tiny shard factories for the data tests (no generator or renderer involved)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from croco.data.shards import PairRecord, ShardReader, ShardWriter


def coordinate_image(size: int, seed: int = 0) -> np.ndarray:
    """An image whose pixels name their position (R = row, G = column, B = seed), to locate crops."""
    rows, cols = np.mgrid[0:size, 0:size]
    blue = np.full((size, size), seed % 256)
    return np.stack([rows, cols, blue], axis=-1).astype(np.uint8)


def make_record(
    rng: np.random.Generator,
    *,
    size: int = 32,
    scene: str = "scene0",
    covis: tuple[float, float] = (0.5, 0.5),
    depth: bool = False,
    extras: dict[str, np.ndarray] | None = None,
) -> PairRecord:
    """A pair of smooth random images with random cameras (JPEG-friendly, so round trips stay close)."""

    def image() -> np.ndarray:
        coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        return np.kron(coarse, np.ones((size // 4, size // 4, 1))).astype(np.uint8)

    def pose() -> np.ndarray:
        matrix = np.eye(4)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        matrix[:3, :3] = q * np.sign(np.linalg.det(q))
        matrix[:3, 3] = rng.normal(size=3)
        return matrix

    focal = size / 2 / np.tan(np.radians(30))
    intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    return PairRecord(
        image1=image(),
        image2=image(),
        K1=intrinsics,
        K2=intrinsics.copy(),
        pose1=pose(),
        pose2=pose(),
        covis12=covis[0],
        covis21=covis[1],
        scene=scene,
        depth1=rng.uniform(0.5, 8.0, (size, size)) if depth else None,
        depth2=rng.uniform(0.5, 8.0, (size, size)) if depth else None,
        extras=extras or {},
    )


def write_shard(
    path: Path,
    scenes: Sequence[str],
    overlaps: Sequence[float],
    *,
    size: int = 64,
    seed: int = 0,
    source: str = "test",
) -> Path:
    """One shard with one pair per (scene, overlap) entry; covis12 = overlap + 0.05 (capped), covis21 = overlap."""
    rng = np.random.default_rng(seed)
    with ShardWriter(path, source=source, resolution=(size, size), fov_deg=60.0) as writer:
        for scene, overlap in zip(scenes, overlaps, strict=True):
            writer.add(make_record(rng, size=size, scene=scene, covis=(min(1.0, overlap + 0.05), overlap)))
    return path


@pytest.fixture
def shard_folder(tmp_path: Path) -> Path:
    """Two 64x64 shards of 24 pairs: 12 scenes, overlaps spread evenly over [0, 1)."""
    folder = tmp_path / "pairs"
    for shard in range(2):
        scenes = [f"scene{(shard * 24 + i) // 4:02d}" for i in range(24)]
        overlaps = [((shard * 24 + i) * 7 % 48) / 48 for i in range(24)]
        write_shard(folder / f"shard-{shard:05d}.h5", scenes, overlaps, size=64, seed=shard)
    return folder


@pytest.fixture
def corrupt_pair() -> Callable[[Path, int], None]:
    """Damage image 2 of one pair in place (its JPEG stream loses its end), leaving the shard itself healthy."""

    def damage(path: Path, row: int) -> None:
        reader = ShardReader(path)
        _, middle, end = (int(v) for v in reader._offsets[row])
        assert reader._blob_file_offset is not None
        with open(path, "r+b") as handle:
            handle.seek(reader._blob_file_offset + middle + (end - middle) // 2)
            handle.write(b"\x00" * ((end - middle) - (end - middle) // 2))

    return damage
