"""Images for importers: read any common format as RGB, then resize and centre-crop to the shard's square size,
moving the intrinsics along so that a 3-D point still projects onto the same image content.

Pixel convention (docs/data-format.md, "Conventions"): the centre of pixel ``(u, v)`` is at ``(u + 0.5, v +
0.5)``, so the image spans ``[0, W] x [0, H]`` and a resize by ``s`` maps ``x`` to ``s * x`` exactly, a crop by
``(left, top)`` to ``x - left``. COLMAP uses the same convention.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from croco.importers.base import SkipPair

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File extensions read as images (any case)."""
UNREADABLE = "unreadable image"


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, *, exif_transpose: bool = False) -> np.ndarray:
    """The image at ``path`` as (H, W, 3) uint8 RGB; ``SkipPair('unreadable image', ...)`` naming the file if it
    is missing, truncated or not an image. ``exif_transpose`` turns it as its EXIF orientation says (photos from
    phones); keep it off where intrinsics refer to the stored pixels (COLMAP reads them unturned)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                pil.load()  # decodes now: a truncated file fails here, not later
                if exif_transpose:
                    pil = ImageOps.exif_transpose(pil)
                return np.asarray(pil.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SkipPair(UNREADABLE, f"{path}: {text}") from None


def square_crop_transform(width: int, height: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(A, (new_width, new_height)): the 3x3 map from pixel coordinates of a ``width`` x ``height`` image to
    those of its ``size`` x ``size`` version (shorter side resized to ``size``, then the centre cropped), and
    the size it is resized to before the crop. New intrinsics are ``A @ K``."""
    if min(width, height) < 1 or size < 1:
        raise ValueError(f"cannot fit a {width}x{height} image into {size}x{size}")
    scale = size / min(width, height)
    new_width = max(size, round(width * scale))
    new_height = max(size, round(height * scale))
    left, top = (new_width - size) // 2, (new_height - size) // 2
    transform = np.array(
        [[new_width / width, 0.0, -left], [0.0, new_height / height, -top], [0.0, 0.0, 1.0]], dtype=np.float64
    )
    return transform, (new_width, new_height)


def fit_square(image: np.ndarray, K: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``image`` so that its shorter side is ``size`` (Lanczos when shrinking, bicubic when enlarging),
    crop its centre to ``size`` x ``size``, and return it with the matching intrinsics (``None`` stays
    ``None``)."""
    height, width = image.shape[:2]
    transform, (new_width, new_height) = square_crop_transform(width, height, size)
    cropped = crop_square(resize_image(image, new_width, new_height), transform, size)
    return cropped, None if K is None else transform @ np.asarray(K, dtype=np.float64)


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` resized to ``width`` x ``height`` (Lanczos when shrinking, bicubic when enlarging)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    resample = Image.Resampling.LANCZOS if width < image.shape[1] else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample))


def crop_square(resized: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """The centre crop of a resized image, as ``square_crop_transform`` placed it."""
    left, top = int(-transform[0, 2]), int(-transform[1, 2])
    return np.ascontiguousarray(resized[top : top + size, left : left + size])
