"""Tiny on-disk copies of the stereo / flow benchmarks' layouts (Middlebury, KITTI, FlyingThings3D,
MPI-Sintel, FlyingChairs), written in the tests with the project's own writers: no download involved.

Images name their position and their pair: red = 10 * column, green = 10 * row, blue = ``tag`` (so a test can
tell which file a sample came from), and the ground truth is a known function of the pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from croco.data.stereoflow_io import write_flo, write_kitti_disparity, write_kitti_flow, write_pfm

HEIGHT, WIDTH = 12, 16


def tagged_image(tag: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8: red = 10 * column, green = 10 * row, blue = tag."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 10 % 256, rows * 10 % 256, np.full_like(rows, tag % 256)], axis=-1).astype(
        np.uint8
    )


def save_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def disparity_map(tag: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A positive disparity 1 + column / 4 + tag / 8 (KITTI-representable), first row 0 (= invalid)."""
    cols = np.arange(width, dtype=np.float32)[None, :].repeat(height, axis=0)
    disparity = 1.0 + cols / 4 + tag / 8
    disparity[0] = 0.0
    return disparity.astype(np.float32)


def flow_map(tag: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 2) flow u = column / 2 - tag, v = 1.5 (KITTI-representable)."""
    cols = np.arange(width, dtype=np.float32)[None, :].repeat(height, axis=0)
    return np.stack([cols / 2 - tag, np.full_like(cols, 1.5)], axis=-1).astype(np.float32)


def write_middlebury(root: Path, scenes: Sequence[str], size: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    """``<root>/<scene>/{im0.png, im1.png, disp0.pfm, calib.txt}``; disp0 is inf on its first row."""
    for tag, scene in enumerate(scenes):
        folder = root / scene
        save_image(folder / "im0.png", tagged_image(2 * tag, *size))
        save_image(folder / "im1.png", tagged_image(2 * tag + 1, *size))
        disparity = disparity_map(tag, *size)
        disparity[0] = np.inf
        write_pfm(folder / "disp0.pfm", disparity)
        (folder / "calib.txt").write_text(
            f"cam0=[100 0 8; 0 100 6; 0 0 1]\ncam1=[100 0 9; 0 100 6; 0 0 1]\ndoffs=1\nbaseline=170.5\n"
            f"width={size[1]}\nheight={size[0]}\nndisp=64\n"
        )
    return root


def write_kitti(root: Path, year: int, frames: int, size: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    """A KITTI ``training/`` tree with stereo (``_10`` left / right + disparity) and flow (``_10`` ->
    ``_11`` + flow) ground truth; the first row of every ground truth is invalid."""
    left, right, disparity_dir = (
        ("colored_0", "colored_1", "disp_occ") if year == 2012 else ("image_2", "image_3", "disp_occ_0")
    )
    training = root / "training"
    for frame in range(frames):
        stem = f"{frame:06d}"
        save_image(training / left / f"{stem}_10.png", tagged_image(3 * frame, *size))
        save_image(training / left / f"{stem}_11.png", tagged_image(3 * frame + 1, *size))
        save_image(training / right / f"{stem}_10.png", tagged_image(3 * frame + 2, *size))
        write_kitti_disparity(training / disparity_dir / f"{stem}_10.png", disparity_map(frame, *size))
        valid = np.ones(size, dtype=bool)
        valid[0] = False
        write_kitti_flow(training / "flow_occ" / f"{stem}_10.png", flow_map(frame, *size), valid)
    return root


def write_sceneflow(root: Path, frames: dict[str, int], passes: Sequence[str] = ("clean", "final")) -> Path:
    """FlyingThings3D: ``frames[part]`` frames (6, 7, ...) of sequence A/0000 per part (TRAIN / TEST)."""
    for part, count in frames.items():
        for index in range(count):
            number = f"{6 + index:04d}"
            for tag, pass_ in enumerate(passes):
                base = root / f"frames_{pass_}pass" / part / "A" / "0000"
                save_image(base / "left" / f"{number}.png", tagged_image(10 * index + tag))
                save_image(base / "right" / f"{number}.png", tagged_image(10 * index + tag + 5))
            write_pfm(
                root / "disparity" / part / "A" / "0000" / "left" / f"{number}.pfm", disparity_map(index) + 1
            )
    return root


def write_sintel(root: Path, scenes: dict[str, int], passes: Sequence[str] = ("clean", "final")) -> Path:
    """MPI-Sintel ``training/{pass}/<scene>/frame_XXXX.png`` (1-based), a ``.flo`` per frame but the last."""
    for scene, count in scenes.items():
        for frame in range(1, count + 1):
            for tag, pass_ in enumerate(passes):
                save_image(
                    root / "training" / pass_ / scene / f"frame_{frame:04d}.png", tagged_image(frame + tag)
                )
            if frame < count:
                write_flo(root / "training" / "flow" / scene / f"frame_{frame:04d}.flo", flow_map(frame))
    return root


def write_flyingchairs(
    root: Path, labels: Sequence[int], split_file: str = "FlyingChairs_train_val.txt"
) -> Path:
    """``data/XXXXX_{img1,img2}.ppm`` + ``_flow.flo`` for pairs 1..N and the split file (1 train, 2 val)."""
    for number in range(1, len(labels) + 1):
        save_image(root / "data" / f"{number:05d}_img1.ppm", tagged_image(2 * number))
        save_image(root / "data" / f"{number:05d}_img2.ppm", tagged_image(2 * number + 1))
        write_flo(root / "data" / f"{number:05d}_flow.flo", flow_map(number))
    (root / split_file).write_text("".join(f"{label}\n" for label in labels))
    return root
