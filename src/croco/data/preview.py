"""Contact sheet of random pairs from a shard folder, to eyeball a dataset before training on it.

    python -m croco.data.preview data/synthetic --out sheet.png [--pairs 16] [--cols 4] [--size 160] [--seed 0]

Each cell shows image 1 (the view to be reconstructed) next to image 2 (the reference view) with the scene id
and the overlap (``min(covis12, covis21)``, then the two directional co-visibilities) underneath.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from croco.data.shards import ShardReader, list_shards
from croco.utils.files import atomic_output

PAD = 6  # pixels between and around cells
GAP = 2  # pixels between image 1 and image 2 of a pair
CAPTION = 16  # caption height in pixels


def sheet_size(pairs: int, cols: int, size: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with ``pairs`` cells, ``cols`` per row, thumbnails ``size`` high."""
    cols = max(1, min(cols, pairs))
    rows = -(-pairs // cols)
    return cols * (2 * size + GAP + PAD) + PAD, rows * (size + CAPTION + PAD) + PAD


def pick_pairs(readers: list[ShardReader], count: int, seed: int) -> list[tuple[ShardReader, int]]:
    """``count`` distinct pairs drawn uniformly over all shards (fewer if the folder holds fewer)."""
    sizes = np.asarray([len(r) for r in readers])
    total = int(sizes.sum())
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    picks = []
    for flat in chosen:
        shard = int(np.searchsorted(starts, flat, side="right") - 1)
        picks.append((readers[shard], int(flat - starts[shard])))
    return picks


def contact_sheet(
    folder: str | os.PathLike, pairs: int = 16, cols: int = 4, size: int = 160, seed: int = 0
) -> Image.Image:
    """Render the sheet for a shard folder (ShardError if the folder is missing, empty or holds a bad shard)."""
    readers = [ShardReader(path) for path in list_shards(folder)]
    picks = pick_pairs(readers, pairs, seed)
    if not picks:
        raise ValueError(f"{folder}: the shards hold no pairs")
    width, height = sheet_size(len(picks), cols, size)
    cols = max(1, min(cols, len(picks)))
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for cell, (reader, row) in enumerate(picks):
        x0 = PAD + (cell % cols) * (2 * size + GAP + PAD)
        y0 = PAD + (cell // cols) * (size + CAPTION + PAD)
        data = reader.read(row, fields=("image1", "image2", "covis12", "covis21", "overlap", "scene"))
        for k, name in enumerate(("image1", "image2")):
            thumb = Image.fromarray(np.ascontiguousarray(data[name])).resize((size, size), Image.BILINEAR)
            sheet.paste(thumb, (x0 + k * (size + GAP), y0))
        caption = (
            f"{data['scene']}  overlap {data['overlap']:.2f} ({data['covis12']:.2f}/{data['covis21']:.2f})"
        )
        draw.text(
            (x0 + 2, y0 + size + 2), caption[: max(8, (2 * size) // 6)], fill=(230, 230, 230), font=font
        )
    return sheet


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write atomically (temporary file, then rename)."""
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Contact sheet of random pairs from a shard folder.")
    parser.add_argument("folder", type=Path, help="folder of *.h5 pair shards")
    parser.add_argument("--out", type=Path, default=Path("sheet.png"), help="PNG to write")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--cols", type=int, default=4, help="pairs per row")
    parser.add_argument("--size", type=int, default=160, help="thumbnail height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = save_png(contact_sheet(args.folder, args.pairs, args.cols, args.size, args.seed), args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
