"""Pair transforms: grammar, independent crops, official colour jitter (== torchvision), homography, stage 2."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from croco.data.transforms import (
    BRIGHTNESS,
    CONTRAST,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER_RANGE,
    SATURATION,
    PairTransform,
    color_jitter_batch,
    denormalize,
    finish_batch,
    normalize,
    parse_transforms,
    random_homography_corners,
    sample_color_jitter,
    warp_homography,
)
from tests.data.conftest import coordinate_image

TORCHVISION_OPS = {
    BRIGHTNESS: TF.adjust_brightness,
    CONTRAST: TF.adjust_contrast,
    SATURATION: TF.adjust_saturation,
}


def test_grammar() -> None:
    assert parse_transforms("crop224+acolor", 224).crop == (224, 224)
    assert parse_transforms("crop224+acolor", 224).acolor
    assert parse_transforms("crop+acolor", 448).crop == (448, 448)
    # empty tokens are allowed, as in the official code
    assert parse_transforms("", 64) == parse_transforms("crop", 64)
    spec = parse_transforms("resize72+crop64x48", (64, 48))
    assert (spec.resize, spec.crop, spec.acolor) == (72, (64, 48), False)
    assert spec.name == "resize72+crop64x48"
    with pytest.raises(ValueError, match="unknown token 'flip'"):
        parse_transforms("crop224+flip", 224)
    with pytest.raises(ValueError, match="crops to 256x256 but img_size is 224x224"):
        parse_transforms("crop256+acolor", 224)


@pytest.mark.parametrize("order", list(itertools.permutations([BRIGHTNESS, CONTRAST, SATURATION])))
def test_batched_jitter_equals_torchvision(order: tuple[int, int, int]) -> None:
    """Every op order, extreme and random factors, images with clipped highlights: same as torchvision."""
    generator = torch.Generator().manual_seed(sum(o * 10**k for k, o in enumerate(order)))
    images = torch.rand(5, 3, 20, 24, generator=generator)
    images[0] = 1.0  # saturated sample: clamps are exercised
    images[1, :, :10] = 0.0
    factors = torch.rand(5, 3, generator=generator) * 0.8 + 0.6
    factors[2] = torch.tensor([JITTER_RANGE[0]] * 3)
    factors[3] = torch.tensor([JITTER_RANGE[1]] * 3)
    ops = torch.tensor([order] * 5)
    out = color_jitter_batch(images, ops, factors)
    for b in range(5):
        expected = images[b]
        for step in range(3):
            expected = TORCHVISION_OPS[order[step]](expected, float(factors[b, step]))
        torch.testing.assert_close(out[b], expected, atol=2e-6, rtol=0)


def test_batched_jitter_mixes_orders_within_a_batch() -> None:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 16, 16, generator=generator)
    ops = torch.tensor(list(itertools.permutations([0, 1, 2])))
    factors = torch.rand(6, 3, generator=generator) * 0.8 + 0.6
    out = color_jitter_batch(images, ops, factors)
    for b in range(6):
        single = color_jitter_batch(images[b : b + 1], ops[b : b + 1], factors[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], single, atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], out[1])  # different orders give different images


def test_official_jitter_distribution() -> None:
    rng = random.Random(0)
    draws = [sample_color_jitter(rng) for _ in range(3000)]
    factors = np.array([f for _, f in draws])
    assert factors.min() >= JITTER_RANGE[0] and factors.max() <= JITTER_RANGE[1]
    assert abs(factors.mean() - 1.0) < 0.02
    assert {order for order, _ in draws} == set(itertools.permutations([0, 1, 2]))  # random op order


def test_crops_are_independent_and_exact() -> None:
    source = torch.from_numpy(coordinate_image(64))
    transform = PairTransform(parse_transforms("crop48+acolor", 48))
    offsets = []
    for seed in range(20):
        sample = transform(source, source, random.Random(seed))
        view1, view2 = sample["img1"], sample["img2"]
        assert view1.shape == view2.shape == (48, 48, 3) and view1.dtype == torch.uint8
        top1, left1 = int(view1[0, 0, 0]), int(view1[0, 0, 1])
        top2, left2 = int(view2[0, 0, 0]), int(view2[0, 0, 1])
        torch.testing.assert_close(view1, source[top1 : top1 + 48, left1 : left1 + 48])
        torch.testing.assert_close(view2, source[top2 : top2 + 48, left2 : left2 + 48])
        offsets.append((top1, left1, top2, left2))
        jitter = sample["jitter"]
        assert jitter.shape == (2, 2, 3)
        assert sorted(jitter[0, 0].tolist()) == [0, 1, 2] and sorted(jitter[1, 0].tolist()) == [0, 1, 2]
        assert not torch.equal(jitter[0, 1], jitter[1, 1])  # view 2 draws its own jitter
    assert sum(o[:2] != o[2:] for o in offsets) >= 18  # the two views get independent crops
    assert len({o[:2] for o in offsets}) >= 15  # and crops vary between samples
    again = transform(source, source, random.Random(7))
    first = transform(source, source, random.Random(7))
    assert torch.equal(again["img1"], first["img1"]) and torch.equal(again["jitter"], first["jitter"])


def test_eval_transform_is_centred_and_unjittered() -> None:
    source = torch.from_numpy(coordinate_image(64))
    transform = PairTransform(parse_transforms("crop48+acolor", 48), homography=1.0, train=False)
    sample = transform(source, source, random.Random(0))
    assert "jitter" not in sample
    assert (int(sample["img1"][0, 0, 0]), int(sample["img1"][0, 0, 1])) == (8, 8)
    torch.testing.assert_close(sample["img2"], sample["img1"])


def test_resize_then_crop_gives_any_size() -> None:
    transform = PairTransform(parse_transforms("resize96+crop80", 80))
    source = torch.from_numpy(coordinate_image(64))
    sample = transform(source, source, random.Random(0))
    assert sample["img1"].shape == (80, 80, 3)
    with pytest.raises(ValueError, match="needs images of at least 80x80"):
        PairTransform(parse_transforms("crop80", 80)).check_source_size(64, 64)


def test_homography_warps_view2_only_without_borders() -> None:
    spec = parse_transforms("crop48", 48)
    source = torch.from_numpy(coordinate_image(64))
    plain = PairTransform(spec)(source, source, random.Random(5))
    warped = PairTransform(spec, homography=1.0, homography_scale=0.2)(source, source, random.Random(5))
    torch.testing.assert_close(warped["img1"], plain["img1"])
    assert warped["img2"].shape == (48, 48, 3)
    assert not torch.equal(warped["img2"], plain["img2"])
    flat = torch.full((48, 48, 3), 200, dtype=torch.uint8)  # sampling stays inside the image: no black fill
    quad = random_homography_corners(random.Random(1), 48, 48, 0.25)
    assert int(warp_homography(flat, quad).min()) == 200
    grid = torch.from_numpy(coordinate_image(48))
    out = warp_homography(grid, quad)
    for corner, (y, x) in zip(quad, [(0, 0), (0, 47), (47, 47), (47, 0)], strict=True):
        # each output corner shows the source pixel at the corresponding quadrilateral corner
        assert abs(int(out[y, x, 1]) - corner[0]) <= 1 and abs(int(out[y, x, 0]) - corner[1]) <= 1


def test_finish_batch_and_single_pair_apply() -> None:
    generator = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=generator)
    batch = {"img1": uint8, "img2": uint8.clone(), "overlap": torch.rand(4, dtype=torch.float64)}
    out = finish_batch(batch)
    expected = normalize(uint8.permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(out["img1"], expected)
    assert out["img1"].shape == (4, 3, 16, 16) and out["img1"].is_contiguous()
    assert out["overlap"].dtype == torch.float32
    torch.testing.assert_close(denormalize(out["img2"]), uint8.permute(0, 3, 1, 2).float() / 255)
    assert finish_batch(out)["img1"] is out["img1"]  # idempotent
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(mean.expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))
    torch.testing.assert_close(normalize(mean + std), torch.ones(1, 3, 1, 1))

    jitter = torch.tensor([[[0, 1, 2], [1.3, 0.7, 1.1]], [[2, 0, 1], [0.8, 1.2, 0.9]]]).expand(4, 2, 2, 3)
    jittered = finish_batch({"img1": uint8, "img2": uint8, "jitter": jitter})
    view2 = color_jitter_batch(
        uint8.permute(0, 3, 1, 2).float() / 255, jitter[:, 1, 0].long(), jitter[:, 1, 1]
    )
    torch.testing.assert_close(jittered["img2"], normalize(view2), atol=1e-5, rtol=0)

    # the plain-function path against torchvision's own ops applied in the drawn order with the drawn factors
    transform = PairTransform(parse_transforms("crop12+acolor", 12))
    image = coordinate_image(16)
    x1, x2 = transform.apply(image, image, random.Random(0))
    sample = transform(torch.from_numpy(image), torch.from_numpy(image), random.Random(0))
    assert x1.shape == (3, 12, 12)
    for view, out in ((0, x1), (1, x2)):
        expected = sample[f"img{view + 1}"].permute(2, 0, 1).float() / 255
        for op, factor in zip(sample["jitter"][view, 0].long().tolist(), sample["jitter"][view, 1].tolist()):
            expected = TORCHVISION_OPS[op](expected, factor)
        torch.testing.assert_close(out, normalize(expected[None])[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"expected uint8 \(B, H, W, 3\)"):
        finish_batch({"img1": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "img2": uint8})
