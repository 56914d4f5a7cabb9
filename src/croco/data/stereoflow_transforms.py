"""Augmentations of the binocular downstream tasks, after the official CroCo-Stereo / CroCo-Flow ones.

Each transform maps a raw sample of ``croco.data.stereoflow`` (uint8 (3, H, W) ``img1`` / ``img2``, optional
``disparity`` (1, H, W) or ``flow`` (2, H, W) with +inf = invalid, anything else passed through) to a training
sample: float32 ImageNet-normalised images and ground truth cut from the same place.

- ``StereoAugmentor`` (naver/croco ``stereoflow/augmentor.py``, ``StereoAugmentor``): with p = 0.5 a
  horizontal rescale by 2^U(0, 1) (images whose shorter side is below 800 px) or 2^U(-0.2, 0.4), and always at
  least to the crop width + 8; the disparity is resampled by nearest neighbour (+inf stays +inf) and
  multiplied by the horizontal scale; one random crop for both images and the disparity; a vertical flip of
  everything with p = 0.5; with p = 0.5 a jitter of the right image only (a rotation by U(-0.1, 0.1) degrees
  about a random centre and a vertical shift by U(-2, 2) px: imperfect rectification); colour: with p = 0.5
  one random op, otherwise all five in a random order, each applied with p = 0.5 (contrast U(0.8, 1.2), gamma
  U(0.7, 1.5), brightness U(0.5, 2), hue U(-0.1, 0.1), saturation U(0.8, 1.2)), each op drawing a fresh factor
  for the right image with p = 0.5.
- ``FlowAugmentor`` (same file, ``FlowAugmentor``, itself after RAFT / unimatch): with p = 0.8 a rescale by
  2^U(-0.2, 0.5), stretched with p = 0.8 by 2^U(-0.2, 0.2) per axis, each axis at least to the crop + 8; dense
  flow is resized bilinearly, flow with invalid (+inf) entries by scattering every valid vector to its
  rescaled position (no interpolation across invalid pixels), both multiplied by the per-axis scales;
  horizontal flip with p = 0.5 (u negated), vertical flip with p = 0.1 (v negated); one random crop;
  ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.5/pi)`` drawn separately for each image
  with p = 0.2, otherwise applied once to both stacked vertically (as the official code does).
- ``PoseAugmentor``: one random crop for both images (no rescale, no flip: both would change the relative pose
  unless the intrinsics and the pose were transformed along) and the flow colour jitter. The intrinsics are
  ignored: a pose head regresses the relative pose from the images alone.
- ``EvalTransform``: a centre crop (or none when ``crop_size`` is None) for every target.

Deviations from the official code, all for alignment or robustness: images stay float in [0, 1] between steps
(the official code rounds to uint8 after each colour op); scale factors are the *actual* size ratios
(new width / width), so the ground truth matches the resized images exactly; nearest and scattered
resampling use pixel centres like the bilinear image resize; a flow crop always fits (an image smaller than
the crop is rescaled up even when the spatial augmentation is skipped); the right image's saturation factor
is drawn from U(0.8, 1.2) (the official code draws U(-0.8, 1.2) there, a typo).

Randomness comes from torch's global generator (``torch.rand`` & co.), so a sample is reproducible under
``torch.manual_seed`` and Lightning seeds each DataLoader worker differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from croco.data.dense_transforms import crop_resize_nearest
from croco.data.transforms import normalize
from croco.utils.sizes import as_hw

__all__ = [
    "GT_KEYS",
    "EvalTransform",
    "FlowAugmentor",
    "PoseAugmentor",
    "StereoAugmentor",
    "centre_crop_offsets",
    "color_jitter",
    "resize_flow",
    "warp_right_image",
]

GT_KEYS: tuple[str, ...] = ("disparity", "flow")
"""Per-pixel ground truth that follows the images' geometry."""

HUE_JITTER = 0.5 / math.pi


# --------------------------------------------------------------------------------------------- randomness


def _rand() -> float:
    """U(0, 1) from torch's global generator."""
    return float(torch.rand(()))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * _rand()


def _randint(high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, ()))


# --------------------------------------------------------------------------------------------- helpers


def _as_float_images(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (3, H, W) ``img1`` / ``img2`` -> float32 [0, 1]; one-line errors for anything else."""
    name = sample.get("name", "sample")
    images = []
    for key in ("img1", "img2"):
        image = sample.get(key)
        if not torch.is_tensor(image) or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(getattr(image, "shape", ()))
            raise ValueError(f"{name}: {key} must be a (3, H, W) tensor, got {shape}")
        images.append(image.float().div_(255.0) if image.dtype == torch.uint8 else image.float())
    if images[0].shape != images[1].shape:
        raise ValueError(
            f"{name}: img1 {tuple(images[0].shape)} and img2 {tuple(images[1].shape)} differ in size"
        )
    size = tuple(images[0].shape[1:])
    for key in GT_KEYS:
        if key in sample and tuple(sample[key].shape[1:]) != size:
            raise ValueError(
                f"{name}: {key} of size {tuple(sample[key].shape[1:])} differs from the images' {size}"
            )
    return images[0], images[1]


def _finish(
    sample: dict[str, Any], img1: torch.Tensor, img2: torch.Tensor, gt: dict[str, Any]
) -> dict[str, Any]:
    """The output sample: normalised contiguous images, the ground truth, every other key passed through."""
    out = dict(sample)
    out["img1"] = normalize(img1.clamp(0.0, 1.0)[None])[0].contiguous()
    out["img2"] = normalize(img2.clamp(0.0, 1.0)[None])[0].contiguous()
    for key, value in gt.items():
        out[key] = value.float().contiguous()
    return out


def _resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> ``size`` (bilinear on pixel centres, no antialiasing, as OpenCV's INTER_LINEAR)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def _resize_nearest(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> ``size`` by nearest neighbour on pixel centres (values copied, never mixed)."""
    height, width = target.shape[-2:]
    return crop_resize_nearest(target, (0, 0, height, width), size)


def _crop(tensor: torch.Tensor, top: int, left: int, size: tuple[int, int]) -> torch.Tensor:
    return tensor[..., top : top + size[0], left : left + size[1]]


def centre_crop_offsets(
    height: int, width: int, size: tuple[int, int], name: str = "sample"
) -> tuple[int, int]:
    """Top-left corner of a centred ``size`` crop; a one-line error if the image is smaller."""
    if size[0] > height or size[1] > width:
        raise ValueError(f"{name}: crop {size[0]}x{size[1]} is larger than the {height}x{width} images")
    return (height - size[0]) // 2, (width - size[1]) // 2


def _random_crop_offsets(height: int, width: int, size: tuple[int, int], name: str) -> tuple[int, int]:
    if size[0] > height or size[1] > width:
        raise ValueError(f"{name}: crop {size[0]}x{size[1]} is larger than the {height}x{width} images")
    return _randint(height - size[0] + 1), _randint(width - size[1] + 1)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(2, H, W) flow -> ``size``, vectors multiplied by the per-axis scales (new size / old size).

    Dense flow (all finite) is resized bilinearly. Flow with +inf entries (sparse or partly invalid) is
    resized by moving every valid vector to the pixel nearest its rescaled position (on pixel centres:
    x' = (x + 0.5) s - 0.5) and leaving the rest +inf, so that invalid pixels never bleed into valid ones (the
    official sparse path).
    """
    height, width = flow.shape[-2:]
    new_h, new_w = size
    scales = torch.tensor([new_w / width, new_h / height], dtype=flow.dtype).view(2, 1, 1)
    if bool(torch.isfinite(flow).all()):
        return _resize_bilinear(flow, size) * scales
    valid = torch.isfinite(flow).all(dim=0)
    ys, xs = torch.nonzero(valid, as_tuple=True)
    new_x = torch.round((xs.to(torch.float64) + 0.5) * (new_w / width) - 0.5).long()
    new_y = torch.round((ys.to(torch.float64) + 0.5) * (new_h / height) - 0.5).long()
    inside = (new_x >= 0) & (new_x < new_w) & (new_y >= 0) & (new_y < new_h)
    out = torch.full((2, new_h, new_w), math.inf, dtype=flow.dtype)
    out[:, new_y[inside], new_x[inside]] = flow[:, ys[inside], xs[inside]] * scales.view(2, 1)
    return out


def warp_right_image(
    image: torch.Tensor, angle_deg: float, centre: tuple[float, float], shift_y: float
) -> torch.Tensor:
    """Rotate a (C, H, W) float image by ``angle_deg`` about ``centre`` (x, y) in pixels, then shift it down
    by ``shift_y`` px (bilinear, zeros outside, like OpenCV's ``warpAffine``)."""
    _, height, width = image.shape
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    # output (x, y) = R (p - c) + c + (0, shift)  =>  p = R^T ((x, y) - c - (0, shift)) + c
    dx, dy = xs - centre[0], ys - centre[1] - shift_y
    src_x = cos * dx + sin * dy + centre[0]
    src_y = -sin * dx + cos * dy + centre[1]
    grid = torch.stack([(src_x + 0.5) / width * 2 - 1, (src_y + 0.5) / height * 2 - 1], dim=-1)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[
        0
    ]


# --------------------------------------------------------------------------------------------- colour


def _tf() -> Any:
    from torchvision.transforms.v2 import functional as TF

    return TF


def color_jitter(image: torch.Tensor, order: Sequence[int], factors: Sequence[float]) -> torch.Tensor:
    """torchvision ``ColorJitter`` on a float [0, 1] (3, H, W) image: ops 0 brightness, 1 contrast,
    2 saturation, 3 hue, applied in ``order`` with ``factors`` indexed by op id."""
    TF = _tf()
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in order:
        image = ops[op](image, factors[op])
    return image


def _sample_color_jitter(strength: float = 0.4, hue: float = HUE_JITTER) -> tuple[list[int], list[float]]:
    """``ColorJitter(strength, strength, strength, hue).get_params``: a random op order, one factor per op."""
    order = torch.randperm(4).tolist()
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [_uniform(low, high), _uniform(low, high), _uniform(low, high), _uniform(-hue, hue)]
    return order, factors


def _flow_color_transform(
    img1: torch.Tensor, img2: torch.Tensor, asymmetric_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official flow photometric augmentation: per image with ``asymmetric_prob``, else both stacked."""
    if _rand() < asymmetric_prob:
        return color_jitter(img1, *_sample_color_jitter()), color_jitter(img2, *_sample_color_jitter())
    height = img1.shape[1]
    stacked = color_jitter(torch.cat([img1, img2], dim=1), *_sample_color_jitter())
    return stacked[:, :height], stacked[:, height:]


def _stereo_color_ops() -> list[tuple[Callable[[torch.Tensor, float], torch.Tensor], tuple[float, float]]]:
    TF = _tf()
    return [
        (TF.adjust_contrast, (0.8, 1.2)),
        (TF.adjust_gamma, (0.7, 1.5)),
        (TF.adjust_brightness, (0.5, 2.0)),
        (TF.adjust_hue, (-0.1, 0.1)),
        (TF.adjust_saturation, (0.8, 1.2)),
    ]


# --------------------------------------------------------------------------------------------- stereo


class StereoAugmentor:
    """The official CroCo-Stereo training augmentation (see the module docstring); ``color=False`` and the
    probabilities switch parts off (the tests use that to check geometry alone)."""

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_prob: float = 0.5,
        low_res_threshold: float = 800.0,
        low_res_scale: Sequence[float] = (0.0, 1.0),
        high_res_scale: Sequence[float] = (-0.2, 0.4),
        right_jitter_prob: float = 0.5,
        v_flip_prob: float = 0.5,
        color: bool = True,
        color_aug_asym: bool = True,
        color_choice_prob: float = 0.5,
    ) -> None:
        self.crop_size = as_hw(crop_size, "crop_size")
        self.scale_prob = float(scale_prob)
        self.low_res_threshold = float(low_res_threshold)
        self.low_res_scale = (float(low_res_scale[0]), float(low_res_scale[1]))
        self.high_res_scale = (float(high_res_scale[0]), float(high_res_scale[1]))
        self.right_jitter_prob = float(right_jitter_prob)
        self.v_flip_prob = float(v_flip_prob)
        self.color = bool(color)
        self.color_aug_asym = bool(color_aug_asym)
        self.color_choice_prob = float(color_choice_prob)

    def __repr__(self) -> str:
        return f"StereoAugmentor(crop_size={self.crop_size})"

    def _scale_x(self, height: int, width: int) -> float:
        """The horizontal scale: random with ``scale_prob``, at least (crop width + 8) / width either way."""
        minimum = (self.crop_size[1] + 8) / width
        if self.scale_prob > 0 and _rand() < self.scale_prob:
            low, high = (
                self.low_res_scale if min(height, width) < self.low_res_threshold else self.high_res_scale
            )
            return max(2.0 ** _uniform(low, high), minimum)
        return max(1.0, minimum)

    def _color(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ops = _stereo_color_ops()
        if _rand() < self.color_choice_prob:
            chosen = [ops[_randint(len(ops))]]
        else:
            chosen = [ops[i] for i in torch.randperm(len(ops)).tolist()]
        for op, (low, high) in chosen:
            if _rand() < 0.5:
                factor = _uniform(low, high)
                img1 = op(img1, factor)
                if self.color_aug_asym and _rand() < 0.5:
                    factor = _uniform(low, high)
                img2 = op(img2, factor)
        return img1, img2

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        name = sample.get("name", "sample")
        img1, img2 = _as_float_images(sample)
        if "disparity" not in sample:
            raise ValueError(f"{name}: StereoAugmentor needs a 'disparity' (1, H, W) entry")
        disparity = sample["disparity"].float()
        height, width = img1.shape[1:]
        if height < self.crop_size[0]:
            raise ValueError(
                f"{name}: images of height {height} are below the crop height {self.crop_size[0]} "
                "(the stereo augmentation rescales x only)"
            )
        new_width = max(self.crop_size[1], round(width * self._scale_x(height, width)))
        if new_width != width:
            img1 = _resize_bilinear(img1, (height, new_width))
            img2 = _resize_bilinear(img2, (height, new_width))
            disparity = _resize_nearest(disparity, (height, new_width)) * (new_width / width)
        top, left = _random_crop_offsets(height, new_width, self.crop_size, name)
        img1, img2, disparity = (_crop(t, top, left, self.crop_size) for t in (img1, img2, disparity))
        if self.v_flip_prob > 0 and _rand() < self.v_flip_prob:
            img1, img2, disparity = (t.flip(-2) for t in (img1, img2, disparity))
        if self.right_jitter_prob > 0 and _rand() < self.right_jitter_prob:
            shift = _uniform(-2.0, 2.0)
            angle = _uniform(-0.1, 0.1)
            centre = (_uniform(0, img2.shape[2]), _uniform(0, img2.shape[1]))
            img2 = warp_right_image(img2, angle, centre, shift)
        if self.color:
            img1, img2 = self._color(img1, img2)
        return _finish(sample, img1, img2, {"disparity": disparity})


# --------------------------------------------------------------------------------------------- flow


class FlowAugmentor:
    """The official CroCo-Flow training augmentation (see the module docstring)."""

    def __init__(
        self,
        crop_size: int | Sequence[int],
        min_scale: float = -0.2,
        max_scale: float = 0.5,
        spatial_aug_prob: float = 0.8,
        stretch_prob: float = 0.8,
        max_stretch: float = 0.2,
        h_flip_prob: float = 0.5,
        v_flip_prob: float = 0.1,
        color: bool = True,
        asymmetric_color_aug_prob: float = 0.2,
    ) -> None:
        self.crop_size = as_hw(crop_size, "crop_size")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.spatial_aug_prob = float(spatial_aug_prob)
        self.stretch_prob = float(stretch_prob)
        self.max_stretch = float(max_stretch)
        self.h_flip_prob = float(h_flip_prob)
        self.v_flip_prob = float(v_flip_prob)
        self.color = bool(color)
        self.asymmetric_color_aug_prob = float(asymmetric_color_aug_prob)

    def __repr__(self) -> str:
        return f"FlowAugmentor(crop_size={self.crop_size})"

    def _scales(self, height: int, width: int) -> tuple[float, float]:
        """(scale_x, scale_y): random with ``spatial_aug_prob``, each at least (crop + 8) / size along both
        axes (the official clip); without it, just what the crop needs."""
        crop_h, crop_w = self.crop_size
        clip = max((crop_h + 8) / height, (crop_w + 8) / width)
        if _rand() < self.spatial_aug_prob:
            scale = 2.0 ** _uniform(self.min_scale, self.max_scale)
            scale_x = scale_y = scale
            if _rand() < self.stretch_prob:
                scale_x *= 2.0 ** _uniform(-self.max_stretch, self.max_stretch)
                scale_y *= 2.0 ** _uniform(-self.max_stretch, self.max_stretch)
            return max(scale_x, clip), max(scale_y, clip)
        needed = max(crop_h / height, crop_w / width, 1.0)
        return needed, needed

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        name = sample.get("name", "sample")
        img1, img2 = _as_float_images(sample)
        if "flow" not in sample:
            raise ValueError(f"{name}: FlowAugmentor needs a 'flow' (2, H, W) entry")
        flow = sample["flow"].float()
        height, width = img1.shape[1:]
        scale_x, scale_y = self._scales(height, width)
        size = (
            max(self.crop_size[0], round(height * scale_y)),
            max(self.crop_size[1], round(width * scale_x)),
        )
        if size != (height, width):
            img1, img2 = _resize_bilinear(img1, size), _resize_bilinear(img2, size)
            flow = resize_flow(flow, size)
        if self.h_flip_prob > 0 and _rand() < self.h_flip_prob:
            img1, img2 = img1.flip(-1), img2.flip(-1)
            flow = flow.flip(-1) * torch.tensor([-1.0, 1.0]).view(2, 1, 1)
        if self.v_flip_prob > 0 and _rand() < self.v_flip_prob:
            img1, img2 = img1.flip(-2), img2.flip(-2)
            flow = flow.flip(-2) * torch.tensor([1.0, -1.0]).view(2, 1, 1)
        top, left = _random_crop_offsets(*img1.shape[1:], self.crop_size, name)
        img1, img2, flow = (_crop(t, top, left, self.crop_size) for t in (img1, img2, flow))
        if self.color:
            img1, img2 = _flow_color_transform(img1, img2, self.asymmetric_color_aug_prob)
        return _finish(sample, img1, img2, {"flow": flow})


# --------------------------------------------------------------------------------------------- pose / eval


class PoseAugmentor:
    """Relative-pose training: one random crop for both images (upscaled first if smaller than the crop), the
    flow colour jitter, and two changes whose effect on the pose is exact:

    * a horizontal flip of both images (``h_flip_prob``) mirrors the world in both cameras, ``x -> -x``: with
      ``S = diag(-1, 1, 1)``, ``R -> S R S`` and ``t -> S t``;
    * swapping the views (``swap_prob``) gives camera 1 in camera 2's frame: ``R -> R^T``, ``t -> -R^T t``.

    No rescaling, which would change the intrinsics; the intrinsics are otherwise ignored (a crop or a flip off the
    principal point shifts it, which the pose does not depend on)."""

    def __init__(
        self,
        crop_size: int | Sequence[int],
        color: bool = True,
        asymmetric_color_aug_prob: float = 0.2,
        h_flip_prob: float = 0.5,
        swap_prob: float = 0.5,
    ) -> None:
        self.crop_size = as_hw(crop_size, "crop_size")
        self.color = bool(color)
        self.asymmetric_color_aug_prob = float(asymmetric_color_aug_prob)
        self.h_flip_prob, self.swap_prob = float(h_flip_prob), float(swap_prob)

    def __repr__(self) -> str:
        return f"PoseAugmentor(crop_size={self.crop_size}, h_flip_prob={self.h_flip_prob}, swap_prob={self.swap_prob})"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        name = sample.get("name", "sample")
        img1, img2 = _as_float_images(sample)
        rotation, translation = sample["rotation"].double(), sample["translation"].double()
        height, width = img1.shape[1:]
        cover = max(self.crop_size[0] / height, self.crop_size[1] / width)
        if cover > 1:
            size = (
                max(self.crop_size[0], round(height * cover)),
                max(self.crop_size[1], round(width * cover)),
            )
            img1, img2 = _resize_bilinear(img1, size), _resize_bilinear(img2, size)
        top, left = _random_crop_offsets(*img1.shape[1:], self.crop_size, name)
        img1, img2 = _crop(img1, top, left, self.crop_size), _crop(img2, top, left, self.crop_size)
        if self.h_flip_prob > 0 and _rand() < self.h_flip_prob:
            img1, img2 = img1.flip(-1), img2.flip(-1)
            mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
            rotation, translation = rotation * mirror[:, None] * mirror[None, :], translation * mirror
        if self.swap_prob > 0 and _rand() < self.swap_prob:
            img1, img2 = img2, img1
            rotation, translation = rotation.T, -(rotation.T @ translation)
        if self.color:
            img1, img2 = _flow_color_transform(img1, img2, self.asymmetric_color_aug_prob)
        return _finish(sample, img1, img2, {"rotation": rotation, "translation": translation})


class EvalTransform:
    """Evaluation: a centre crop of ``crop_size`` for images and ground truth (None: full images)."""

    def __init__(self, crop_size: int | Sequence[int] | None = None) -> None:
        self.crop_size = None if crop_size is None else as_hw(crop_size, "crop_size")

    def __repr__(self) -> str:
        return f"EvalTransform(crop_size={self.crop_size})"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img1, img2 = _as_float_images(sample)
        gt = {key: sample[key] for key in GT_KEYS if key in sample}
        if self.crop_size is not None:
            top, left = centre_crop_offsets(*img1.shape[1:], self.crop_size, sample.get("name", "sample"))
            img1, img2 = _crop(img1, top, left, self.crop_size), _crop(img2, top, left, self.crop_size)
            gt = {key: _crop(value, top, left, self.crop_size) for key, value in gt.items()}
        return _finish(sample, img1, img2, gt)
