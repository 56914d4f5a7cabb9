"""Label-aligned augmentations for the monocular downstream tasks (depth, segmentation, classification).

``DenseTransform`` maps a raw sample of ``croco.data.dense`` (uint8 (3, H, W) ``image``, optional ``depth``
(1, H, W) / ``segmentation`` (H, W) at the image's size, anything else passed through) to a training sample
of exactly ``size``: float32 ImageNet-normalised image, targets cut from the same box.

Every geometric step is "choose a box in the input, resample it to ``size``": a random resized crop for
training, the largest centred box of the output's aspect for evaluation (= resize to cover ``size`` keeping the
aspect, then centre crop). The image is resampled bilinearly (antialiased when shrinking); the targets with
nearest neighbour at the same pixel centres, so that invalid depth (0) and ignored labels (255) are never
blended into their neighbours and depth values stay metric (resizing does not rescale depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from croco.data.transforms import color_jitter_batch, normalize
from croco.utils.sizes import as_hw

__all__ = ["TARGET_FIELDS", "Box", "DenseTransform", "centre_box", "crop_resize_image", "crop_resize_nearest"]

TARGET_FIELDS: tuple[str, ...] = ("depth", "segmentation")
"""Per-pixel targets that follow the image's geometry (``label`` and ``name`` are passed through)."""

Box = tuple[int, int, int, int]  # top, left, height, width (in input pixels)


def centre_box(height: int, width: int, size: tuple[int, int]) -> Box:
    """The largest centred box with the aspect of ``size``: resizing it to ``size`` = resize-to-cover + centre crop."""
    out_h, out_w = size
    if width * out_h > height * out_w:  # input wider than the output: keep the full height
        box_h, box_w = height, max(1, round(height * out_w / out_h))
    else:
        box_h, box_w = max(1, round(width * out_h / out_w)), width
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def crop_resize_image(image: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Float (C, H, W) -> the ``box`` resampled to ``size`` (bilinear, antialiased when shrinking)."""
    top, left, box_h, box_w = box
    crop = image[:, top : top + box_h, left : left + box_w]
    if (box_h, box_w) == tuple(size):
        return crop.contiguous()
    return F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _nearest_indices(start: int, length: int, out: int) -> torch.Tensor:
    """Source index of each output pixel: the input pixel containing its centre (the bilinear sampling point)."""
    centres = (torch.arange(out, dtype=torch.float64) + 0.5) * (length / out)
    return (start + centres.floor().long()).clamp_(start, start + length - 1)


def crop_resize_nearest(target: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) of any dtype -> the ``box`` resampled to ``size`` by nearest neighbour (values are only
    copied, never mixed)."""
    top, left, box_h, box_w = box
    rows = _nearest_indices(top, box_h, size[0])
    cols = _nearest_indices(left, box_w, size[1])
    return target[..., rows[:, None], cols[None, :]].contiguous()


class DenseTransform:
    """Raw sample -> sample of exactly ``size`` with aligned targets.

    Args:
        size: output (height, width), or an int for a square.
        train: random resized crop + flip + colour jitter; False: deterministic resize-to-cover + centre crop.
        scale: range of the crop's area as a fraction of the image's (torchvision ``RandomResizedCrop``).
        ratio: range of the crop's aspect (width / height) *relative to the output's aspect*, log-uniform, so
            that (1, 1) never distorts; for a square output this is torchvision's ``ratio``.
        hflip: probability of a horizontal flip (image and targets together).
        color_jitter: brightness, contrast and saturation factors uniform in [1 - j, 1 + j] in a random order
            (torchvision ``ColorJitter(j, j, j)``), on the image only; 0 disables.
        seed: draw from a private generator seeded with this (per process; reproducible single-process runs);
            None: torch's global RNG, which Lightning seeds per DataLoader worker.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        train: bool,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        seed: int | None = None,
    ) -> None:
        self.size = as_hw(size, "size")
        self.train = bool(train)
        self.scale = self._range(scale, "scale")
        self.ratio = self._range(ratio, "ratio")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale={list(self.scale)}: expected 0 < min <= max <= 1")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={list(self.ratio)}: expected 0 < min <= max")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip={hflip}: expected a probability in [0, 1]")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter={color_jitter}: expected a strength in [0, 1)")
        self.hflip = float(hflip)
        self.color_jitter = float(color_jitter)
        self.seed = seed
        self._generator: torch.Generator | None = None

    @staticmethod
    def _range(values: Sequence[float], name: str) -> tuple[float, float]:
        pair = [float(v) for v in values]
        if len(pair) != 2:
            raise ValueError(f"{name}={values!r}: expected [min, max]")
        return pair[0], pair[1]

    def __repr__(self) -> str:
        if not self.train:
            return f"DenseTransform(size={self.size}, eval)"
        return (
            f"DenseTransform(size={self.size}, train, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip}, color_jitter={self.color_jitter})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = None  # recreated from the seed in each process
        return state

    # -- randomness ----------------------------------------------------------------------------------------

    def _uniform(self, count: int = 1) -> torch.Tensor:
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        return torch.rand(count, generator=self._generator, dtype=torch.float64)

    def random_box(self, height: int, width: int) -> Box:
        """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the centre box), with the aspect
        range taken relative to the output's aspect."""
        area = height * width
        out_aspect = self.size[1] / self.size[0]
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u_area, u_ratio, u_top, u_left = self._uniform(4).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
            aspect = math.exp(log_low + (log_high - log_low) * u_ratio) * out_aspect
            box_w = round(math.sqrt(target_area * aspect))
            box_h = round(math.sqrt(target_area / aspect))
            if 0 < box_w <= width and 0 < box_h <= height:
                top = min(int(u_top * (height - box_h + 1)), height - box_h)
                left = min(int(u_left * (width - box_w + 1)), width - box_w)
                return top, left, box_h, box_w
        return centre_box(height, width, self.size)

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Brightness / contrast / saturation in a random order on a float [0, 1] (3, H, W) image."""
        order = torch.argsort(self._uniform(3))
        low, high = max(0.0, 1.0 - self.color_jitter), 1.0 + self.color_jitter
        factors = low + (high - low) * self._uniform(3)
        return color_jitter_batch(image[None], order[None], factors[None].float())[0]

    # -- the transform -------------------------------------------------------------------------------------

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        name = sample.get("name", "sample")
        if not torch.is_tensor(image) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(getattr(image, "shape", ()))
            raise ValueError(f"{name}: image must be a uint8 (3, H, W) tensor, got {shape} {image.dtype}")
        height, width = image.shape[1:]
        for key in TARGET_FIELDS:
            if key in sample and tuple(sample[key].shape[-2:]) != (height, width):
                raise ValueError(
                    f"{name}: {key} of size {tuple(sample[key].shape[-2:])} differs from the image's {(height, width)}"
                )
        box = self.random_box(height, width) if self.train else centre_box(height, width, self.size)
        flip = self.train and self.hflip > 0 and float(self._uniform()) < self.hflip
        out = dict(sample)
        pixels = crop_resize_image(image.float().div_(255.0), box, self.size).clamp_(0.0, 1.0)
        if self.train and self.color_jitter > 0:
            pixels = self._jitter(pixels)
        for key in TARGET_FIELDS:
            if key in sample:
                target = crop_resize_nearest(sample[key], box, self.size)
                out[key] = target.flip(-1) if flip else target
        pixels = pixels.flip(-1) if flip else pixels
        out["image"] = normalize(pixels[None])[0].contiguous()
        return out
