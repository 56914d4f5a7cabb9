"""Tiny on-disk copies of the downstream datasets' layouts (NYU Depth V2 .mat files, ADEChallengeData2016, an
ImageNet-style folder tree, hand-made task shards), written in the tests: no download involved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from croco.data.shards import ShardWriter
from tests.data.conftest import make_record

SURFACES = ["void", "floor", "wall", "ceiling", "table", "chair", "lamp"]


def nyu_frame(index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (3, H, W) image and (H, W) depth whose values name their position: red = 10 * column, green = 10 * row,
    blue = frame index; depth = 1 + column + index / 100 metres."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([cols * 10, rows * 10, np.full_like(rows, index)]).astype(np.uint8)
    depth = (1.0 + cols + index / 100).astype(np.float32)
    return image, depth


def write_nyu(
    root: Path,
    count: int = 5,
    height: int = 16,
    width: int = 20,
    train: Sequence[int] = (1, 3, 5),
    test: Sequence[int] = (2, 4),
    splits_format: str = "v5",
    skip: str | None = None,
) -> Path:
    """``nyu_depth_v2_labeled.mat`` laid out like MATLAB writes it (column-major: images (N, 3, W, H), depths
    (N, W, H)) and ``splits.mat`` with 1-based column vectors; ``skip`` leaves one dataset out."""
    root.mkdir(parents=True, exist_ok=True)
    frames = [nyu_frame(i, height, width) for i in range(count)]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as handle:
        if skip != "images":
            handle["images"] = np.stack([image.transpose(0, 2, 1) for image, _ in frames])
        if skip != "depths":
            handle["depths"] = np.stack([depth.T for _, depth in frames])
        handle["labels"] = np.zeros((count, width, height), dtype=np.uint16)  # present in the real file
    splits = {
        "trainNdxs": np.asarray(train, dtype=np.float64).reshape(-1, 1),
        "testNdxs": np.asarray(test, dtype=np.float64).reshape(-1, 1),
    }
    if splits_format == "v5":
        import scipy.io

        scipy.io.savemat(root / "splits.mat", splits)
    else:  # v7.3 = HDF5, column vectors transposed to rows
        with h5py.File(root / "splits.mat", "w") as handle:
            for name, values in splits.items():
                handle[name] = values.T
    return root


def write_ade(root: Path, annotations: dict[str, np.ndarray], split: str = "training") -> Path:
    """ADEChallengeData2016 with one ``<name>.jpg`` per annotation (a grey image of the annotation's size)."""
    images, labels = root / "images" / split, root / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for name, annotation in annotations.items():
        height, width = annotation.shape
        Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(images / f"{name}.jpg")
        Image.fromarray(annotation.astype(np.uint8), mode="L").save(labels / f"{name}.png")
    return root


def write_folders(root: Path, layout: dict[str, dict[str, Sequence[str]]], size: int = 12) -> Path:
    """``root/<split>/<class>/<file>`` images (colour from the class index) for ``{split: {class: [files]}}``."""
    for split, classes in layout.items():
        for index, (name, files) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for file in files:
                pixels = np.full((size, size + 4, 3), (index * 40, 100, 200), np.uint8)
                fmt = "PNG" if file.lower().endswith(".png") else "JPEG"
                Image.fromarray(pixels).save(folder / file, format=fmt)
    return root


def write_task_shard(
    path: Path, semantics: Sequence[tuple[np.ndarray, np.ndarray]], scene: str = "s0"
) -> Path:
    """A task shard as the generator writes it (depth, semantics1/2, attribute surface_classes), one pair per
    (semantics1, semantics2) entry, all of one ``scene``."""
    rng = np.random.default_rng(0)
    size = semantics[0][0].shape[0]
    with ShardWriter(
        path, source="synthetic", resolution=(size, size), attrs={"surface_classes": SURFACES}
    ) as w:
        for first, second in semantics:
            extras = {"semantics1": first.astype(np.uint8), "semantics2": second.astype(np.uint8)}
            w.add(make_record(rng, size=size, scene=scene, depth=True, extras=extras))
    return path
