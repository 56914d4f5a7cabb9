"""Pair transforms, split in two stages so that the DataLoader workers only do integer work.

Stage 1 (`PairTransform`, in the worker, on uint8): optional resize, *independent* random crops of the two
views, optional random homography of view 2, and sampling of the per-view colour-jitter parameters. The images
stay uint8 and channels-last (H, W, 3) as the JPEG decoder produces them: crops are row copies, and there is
4x less to move between processes and to the accelerator than float32.

Stage 2 (`finish_batch`, batched, on whatever device the batch is on; Lightning runs it in
``PairDataModule.on_after_batch_transfer``): uint8 (B, H, W, 3) -> float (B, 3, H, W), colour jitter with the
parameters drawn in stage 1, ImageNet normalisation. Drawing the parameters in the worker from a per-sample seed keeps the result
deterministic for a seed, independent of the number of workers, and independent between the two views.

The transform grammar follows the official CroCo ``--transforms`` string: ``'+'``-separated tokens,
``crop<S>`` (or ``crop`` = crop to ``img_size``; ``crop<H>x<W>`` for non-square), ``resize<S>`` (shorter side to S
before cropping, for output sizes the sources do not cover), ``acolor`` (asymmetric colour jitter: brightness,
contrast and saturation factors each uniform in [0.6, 1.4], hue 0, random order, drawn afresh for each view).
Colour-jitter semantics are torchvision's ``ColorJitter`` on float tensors (checked in tests/data/test_transforms.py);
the official code jitters PIL uint8 images, which rounds after each op (at most about 1/255 per op).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from croco.utils.sizes import as_hw

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
JITTER_RANGE: tuple[float, float] = (0.6, 1.4)  # official 'acolor': ColorJitter(0.4, 0.4, 0.4, hue=0)

BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
JITTER_OPS = ("brightness", "contrast", "saturation")

_SIZE_TOKEN = re.compile(r"^(crop|resize)(\d+)?(?:x(\d+))?$")


# --------------------------------------------------------------------------------------------- grammar


@dataclass(frozen=True)
class TransformSpec:
    """A parsed transform string: what stage 1 does to each pair."""

    crop: tuple[int, int]  # output (height, width)
    resize: int | None = None  # shorter side before cropping
    acolor: bool = False

    @property
    def name(self) -> str:
        tokens = [f"resize{self.resize}"] if self.resize else []
        height, width = self.crop
        tokens.append(f"crop{height}" if height == width else f"crop{height}x{width}")
        if self.acolor:
            tokens.append("acolor")
        return "+".join(tokens)


def parse_transforms(spec: str, img_size: int | tuple[int, int]) -> TransformSpec:
    """Parse ``'crop224+acolor'``-style strings; ``ValueError`` naming the bad token otherwise.

    The output size must equal ``img_size`` (the model's input), so a bare ``crop`` means ``crop<img_size>``
    and an explicit size that disagrees is an error rather than a silent mismatch with the model.
    """
    size = as_hw(img_size)
    crop: tuple[int, int] | None = None
    resize: int | None = None
    acolor = False
    for token in spec.split("+"):
        token = token.strip()
        if not token:
            continue  # the official grammar allows empty tokens
        if token == "acolor":
            acolor = True
            continue
        match = _SIZE_TOKEN.match(token)
        if match is None:
            raise ValueError(
                f"transforms {spec!r}: unknown token {token!r} (expected crop[<S>|<H>x<W>], resize<S>, acolor)"
            )
        kind, first, second = match.groups()
        if kind == "resize":
            if first is None or second is not None:
                raise ValueError(f"transforms {spec!r}: {token!r} must be resize<S> (shorter side in pixels)")
            resize = int(first)
        else:
            crop = size if first is None else (int(first), int(second or first))
    if crop is None:
        crop = size
    if crop != size:
        raise ValueError(
            f"transforms {spec!r}: crops to {crop[0]}x{crop[1]} but img_size is {size[0]}x{size[1]}; "
            f"use 'crop' (= img_size) or crop{size[0]}"
        )
    return TransformSpec(crop=crop, resize=resize, acolor=acolor)


# --------------------------------------------------------------------------------------------- stage 1


def sample_color_jitter(rng: random.Random) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Official 'acolor' parameters for one view: a random op order and one factor per op, in that order."""
    order = [BRIGHTNESS, CONTRAST, SATURATION]
    rng.shuffle(order)
    low, high = JITTER_RANGE
    factors = tuple(rng.uniform(low, high) for _ in order)
    return tuple(order), factors  # type: ignore[return-value]


def random_crop_box(
    rng: random.Random | None, height: int, width: int, size: tuple[int, int]
) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop: uniform (torchvision RandomCrop) or centred when ``rng`` is None."""
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the {height}x{width} image (add resize<S>)")
    if rng is None:
        return (height - crop_h) // 2, (width - crop_w) // 2
    return rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)


def random_homography_corners(rng: random.Random, height: int, width: int, scale: float) -> list[list[int]]:
    """Source quadrilateral for a random perspective zoom: each image corner moved inwards by up to ``scale``.

    Mapping this quadrilateral onto the full frame warps view 2 by a random homography without ever sampling
    outside the image, so no invalid (black) border appears.
    """
    max_dx, max_dy = scale * (width - 1), scale * (height - 1)
    corners = [(0, 0), (width - 1, 0), (width - 1, height - 1), (0, height - 1)]
    quad = []
    for x, y in corners:
        dx = rng.uniform(0, max_dx)
        dy = rng.uniform(0, max_dy)
        quad.append([round(x + dx if x == 0 else x - dx), round(y + dy if y == 0 else y - dy)])
    return quad


def warp_homography(image: torch.Tensor, quad: list[list[int]]) -> torch.Tensor:
    """Warp an (H, W, 3) uint8 image so that ``quad`` (in the input) fills the output frame (bilinear)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    height, width = image.shape[:2]
    frame = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    warped = TF.perspective(
        image.permute(2, 0, 1), startpoints=quad, endpoints=frame, interpolation=InterpolationMode.BILINEAR
    )
    return warped.permute(1, 2, 0).contiguous()


def resize_shorter(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize an (H, W, 3) uint8 image so that its shorter side is ``shorter`` (antialiased bilinear)."""
    from torchvision.transforms.v2 import functional as TF

    height, width = image.shape[:2]
    if min(height, width) == shorter:
        return image
    return TF.resize(image.permute(2, 0, 1), [shorter], antialias=True).permute(1, 2, 0).contiguous()


class PairPlan(NamedTuple):
    """The random choices of one pair's stage 1: crop boxes (top, left) of both views, the homography of
    view 2 (its source quadrilateral) or None, the jitter parameters (2, 2, 3) or None."""

    boxes: tuple[tuple[int, int], tuple[int, int]]
    quad: list[list[int]] | None
    jitter: torch.Tensor | None


class PairTransform:
    """Stage 1 of the pair transform (in DataLoader workers, on (H, W, 3) uint8 tensors).

    ``train=False`` gives the deterministic evaluation view: centre crop, no jitter, no homography.
    """

    def __init__(
        self,
        spec: TransformSpec,
        *,
        homography: float = 0.0,
        homography_scale: float = 0.15,
        train: bool = True,
    ) -> None:
        if not 0.0 <= homography <= 1.0:
            raise ValueError(f"homography must be a probability in [0, 1], got {homography}")
        if not 0.0 <= homography_scale < 0.5:
            raise ValueError(f"homography_scale must be in [0, 0.5), got {homography_scale}")
        self.spec = spec
        self.homography = homography
        self.homography_scale = homography_scale
        self.train = train

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"PairTransform({self.spec.name!r}, homography={self.homography}, {mode})"

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size of a (height, width) source after the optional ``resize<S>`` (torchvision's rule for the
        longer side)."""
        if not self.spec.resize:
            return height, width
        short, long = sorted((height, width))
        long = int(self.spec.resize * long / short)
        return (self.spec.resize, long) if height <= width else (long, self.spec.resize)

    def check_source_size(self, height: int, width: int) -> None:
        """Raise ValueError if images of this size cannot produce the output size."""
        height, width = self.resized_size(height, width)
        crop_h, crop_w = self.spec.crop
        if crop_h > height or crop_w > width:
            raise ValueError(
                f"{self.spec.name} needs images of at least {crop_h}x{crop_w} after resizing, "
                f"the source gives {height}x{width} (add resize<S> to the transforms)"
            )

    def plan(self, size1: tuple[int, int], size2: tuple[int, int], rng: random.Random) -> PairPlan:
        """Draw everything random about a pair from the source sizes alone (no pixels needed): the crop boxes,
        the homography of view 2 and the jitter parameters, in that order of draws."""
        crop = self.spec.crop
        box1 = random_crop_box(rng if self.train else None, *self.resized_size(*size1), crop)
        box2 = random_crop_box(rng if self.train else None, *self.resized_size(*size2), crop)
        quad = None
        if self.train and self.homography > 0 and rng.random() < self.homography:
            quad = random_homography_corners(rng, *crop, self.homography_scale)
        jitter = None
        if self.train and self.spec.acolor:
            # A fresh draw per view (fully asymmetric), packed as one (view, [op ids, factors], step) tensor.
            jitter = torch.tensor([sample_color_jitter(rng), sample_color_jitter(rng)], dtype=torch.float32)
        return PairPlan((box1, box2), quad, jitter)

    def view(self, image: torch.Tensor, box: tuple[int, int]) -> torch.Tensor:
        """The crop at ``box`` of an (H, W, 3) uint8 image, resized first if the transform says so (a view of
        the image when no resize is needed)."""
        if self.spec.resize:
            image = resize_shorter(image, self.spec.resize)
        (top, left), (crop_h, crop_w) = box, self.spec.crop
        return image[top : top + crop_h, left : left + crop_w]

    def __call__(self, image1: torch.Tensor, image2: torch.Tensor, rng: random.Random) -> dict[str, Any]:
        """Crop both (H, W, 3) uint8 views independently; returns uint8 views plus jitter parameters.

        ``jitter`` (2, 2, 3): per view, the op ids (0 brightness, 1 contrast, 2 saturation) in application
        order and their factors. Without colour jitter (evaluation, or no 'acolor') there is no ``jitter``
        entry and stage 2 only converts and normalises.
        """
        plan = self.plan(tuple(image1.shape[:2]), tuple(image2.shape[:2]), rng)
        view1, view2 = self.view(image1, plan.boxes[0]), self.view(image2, plan.boxes[1])
        if plan.quad is not None:
            view2 = warp_homography(view2, plan.quad)
        # Crops stay views: collation copies them once, straight into the (shared-memory) batch.
        sample: dict[str, Any] = {"img1": view1, "img2": view2}
        if plan.jitter is not None:
            sample["jitter"] = plan.jitter
        return sample

    def apply(self, image1: Any, image2: Any, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages for one pair of (H, W, 3) uint8 images (tensors or arrays), without Lightning.

        Returns the two normalised float (3, S, S) views, exactly what a batch would contain.
        """
        sample = self(torch.as_tensor(image1), torch.as_tensor(image2), rng)
        batch = {key: value.unsqueeze(0) for key, value in sample.items()}
        batch = finish_batch(batch)
        return batch["img1"][0], batch["img2"][0]


def decode_views_on(device: torch.device | str, batch: dict[str, Any], transform: PairTransform) -> dict[str, Any]:
    """Stage 1 finished on ``device`` for a batch whose JPEGs were left encoded by the workers
    (``PairDataset(decode_on_device=True)``): ``img1_jpeg`` / ``img2_jpeg`` (lists of 1-D uint8 CPU tensors)
    and ``boxes`` (B, 2, 2) -> uint8 (B, H, W, 3) ``img1`` / ``img2`` on ``device``. torchvision's
    ``decode_jpeg`` decodes the whole list at once (nvJPEG on a CUDA device, libjpeg-turbo on the CPU); the
    crops are those the workers drew, so the batch equals the one decoded in the workers."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    out = dict(batch)
    boxes = out.pop("boxes").tolist()
    crop_h, crop_w = transform.spec.crop
    for view, key in enumerate(("img1", "img2")):
        encoded = out.pop(f"{key}_jpeg")
        with warnings.catch_warnings():  # torchvision 0.29 points its decoders to TorchCodec; still supported
            warnings.simplefilter("ignore", UserWarning)
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        views = torch.empty((len(images), crop_h, crop_w, 3), dtype=torch.uint8, device=device)
        for row, image in enumerate(images):
            views[row] = transform.view(image.permute(1, 2, 0), tuple(boxes[row][view]))
        out[key] = views
    return out


# --------------------------------------------------------------------------------------------- stage 2


def _channel_vector(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def color_jitter_batch(
    images: torch.Tensor, ops: torch.Tensor, factors: torch.Tensor, input_scale: float = 1.0
) -> torch.Tensor:
    """Per-sample brightness / contrast / saturation in a per-sample order, for a whole batch at once.

    ``images`` (B, 3, H, W) float, ``input_scale`` times an image in [0, 1] (e.g. raw 0-255 values with
    ``input_scale=1/255``: the scaling is folded into the first op's matrix, one pass less); ``ops`` (B, K) op
    ids applied left to right; ``factors`` (B, K). Each op is torchvision's blend ``clamp(f * x + (1 - f) *
    ref, 0, 1)`` with ref = 0 (brightness), the mean of the grayscale image (contrast) or the grayscale image
    (saturation). Since grayscale is linear, every op is a per-sample 3x3 colour matrix plus offset followed
    by the clamp, so one step for the whole batch is a single ``baddbmm`` (about 3x fewer memory passes than
    blending with explicit grayscale images). On the CPU the grayscale mean, a full pass, is only computed at
    steps where some sample applies contrast (reading the op ids there costs no device synchronisation).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    ops = ops.to(images.device).view(batch, -1)
    factors = factors.to(device=images.device, dtype=images.dtype).view(batch, -1)
    weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device)
    identity = torch.eye(3, dtype=images.dtype, device=images.device)
    pixels = images.reshape(batch, 3, height * width)
    on_cpu = images.device.type == "cpu"
    scale = float(input_scale)
    if ops.shape[1] == 0:
        return (pixels * scale).view(batch, 3, height, width)
    for step in range(ops.shape[1]):
        factor = factors[:, step]
        blend = 1.0 - factor
        is_contrast = ops[:, step] == CONTRAST
        saturation = (ops[:, step] == SATURATION).to(images.dtype) * blend
        # out_c = f * x_c + s * (w . x)  +  k * mean(w . x), with x scaled by ``scale`` (1 after the first op)
        matrix = (factor.view(batch, 1, 1) * identity + saturation.view(batch, 1, 1) * weights.view(1, 1, 3)) * scale
        if on_cpu and not bool(is_contrast.any()):
            offset = torch.zeros(batch, 3, 1, dtype=images.dtype)
        else:
            contrast = is_contrast.to(images.dtype) * blend
            mean_gray = (pixels.mean(dim=2) @ weights) * scale
            offset = (contrast * mean_gray).view(batch, 1, 1).expand(batch, 3, 1)
        pixels = torch.baddbmm(offset, matrix, pixels).clamp_(0.0, 1.0)
        scale = 1.0
    return pixels.view(batch, 3, height, width)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised (what CroCoNet expects)."""
    return (images - _channel_vector(IMAGENET_MEAN, images)) / _channel_vector(IMAGENET_STD, images)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images -> [0, 1] (clamped), for panels and previews."""
    return (images * _channel_vector(IMAGENET_STD, images) + _channel_vector(IMAGENET_MEAN, images)).clamp(
        0, 1
    )


def finish_views(
    images: torch.Tensor,
    ops: torch.Tensor | None = None,
    factors: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> [jitter] -> ImageNet-normalised float32 (B, 3, H, W), on the input's device.

    On the CPU the batch is processed in chunks of a few samples: every fresh full-batch float tensor costs
    more in page faults than the arithmetic itself (tensors above glibc's mmap threshold are never reused),
    while chunk-sized temporaries are, and four 224x224 images (2.4 MB of float) mostly stay in cache across
    the passes (measured: chunks of 4 ~1.2x faster than 8 or 16). Accelerators (caching allocators) take the
    batch in one go.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    batch, height, width, _ = images.shape
    chunk = chunk or (4 if images.device.type == "cpu" else batch)
    out = torch.empty((batch, 3, height, width), dtype=torch.float32, device=images.device)
    jitter = ops is not None and factors is not None
    # (x / 255 - mean) / std as one multiply-add; with jitter the 1/255 goes into its first colour matrix
    scale = 1.0 / _channel_vector(IMAGENET_STD, out)
    shift = -_channel_vector(IMAGENET_MEAN, out) * scale
    if not jitter:
        scale = scale / 255.0
    for start in range(0, batch, chunk):
        part = slice(start, start + chunk)
        # uint8 NHWC -> float NCHW in one pass (a contiguous copy of the permuted view)
        floats = images[part].permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        if jitter:
            floats = color_jitter_batch(floats, ops[part], factors[part], input_scale=1.0 / 255.0)
        torch.addcmul(shift, floats, scale, out=out[part])
    return out


def finish_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Stage 2 on a collated batch, on the batch's device: uint8 (B, H, W, 3) views -> jittered, normalised
    float32 (B, 3, H, W) (see ``finish_views``).

    Consumes the ``jitter`` entry (B, 2, 2, 3); a batch whose images are already float is returned unchanged,
    so applying it twice is harmless.
    """
    out = dict(batch)
    jitter = out.pop("jitter", None)
    for view, key in enumerate(("img1", "img2")):
        if out[key].dtype != torch.uint8:
            continue
        if jitter is None:
            out[key] = finish_views(out[key])
        else:
            out[key] = finish_views(out[key], jitter[:, view, 0].long(), jitter[:, view, 1])
    if "overlap" in out and torch.is_tensor(out["overlap"]):
        out["overlap"] = out["overlap"].float()
    return out
