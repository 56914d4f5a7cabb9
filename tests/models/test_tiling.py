"""Tiled inference (naver/croco ``stereoflow/engine.py: tiled_pred``): exact single-window output, confidence
weighting, coverage of every pixel, and the small-image upscaling with per-axis rescaling of the values."""

from __future__ import annotations

import math

import pytest
import torch

from croco.models.tiling import confidence_weight, parse_conf_mode, tile_offsets, tiled_pred


def _net(channels: int):
    """A fixed random conv net standing in for a binocular model: (crop1, crop2) -> (B, C + 1, h, w)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, channels + 1, 3, padding=1)
    return lambda a, b: conv(torch.cat([a, b], dim=1))


@pytest.mark.parametrize("channels", [1, 2])
def test_one_window_over_the_whole_image_is_the_model_output(channels):
    net = _net(channels)
    img1, img2 = torch.randn(2, 3, 24, 40), torch.randn(2, 3, 24, 40)
    pred, conf = tiled_pred(net, img1, img2, window=(24, 40), channels=channels)
    with torch.no_grad():
        out = net(img1, img2)
    assert torch.equal(pred, out[:, :channels]) and torch.equal(conf, out[:, channels:])


def test_offsets_follow_the_official_rule():
    assert tile_offsets(10, 10, 0.7) == [0]
    # 1 + ceil((100 - 40) / 12) = 6 windows, linspace(0, 60, 6)
    assert tile_offsets(100, 40, 0.7) == [0, 12, 24, 36, 48, 60]
    assert tile_offsets(50, 40, 0.5) == [0, 10]
    with pytest.raises(ValueError):
        tile_offsets(30, 40, 0.5)
    with pytest.raises(ValueError):
        tile_offsets(50, 40, 1.0)


def test_weights_decrease_with_the_raw_confidence():
    c = torch.tensor([-5.0, 0.0, 5.0])
    w = confidence_weight(c, "conf_expsigmoid_10_5")
    torch.testing.assert_close(w, torch.exp(-10 * 2 * (torch.sigmoid(c / 5) - 0.5)))
    torch.testing.assert_close(confidence_weight(c, "conf_expbeta3"), torch.exp(-3 * c))
    assert torch.all(w.diff() < 0)
    assert parse_conf_mode("conf_expsigmoid_30_10") == ("expsigmoid", 30.0, 10.0)
    with pytest.raises(ValueError, match="conf_mode"):
        parse_conf_mode("conf_foo")


class _Disagreeing:
    """Each tile predicts a constant: value ``x0 + 100`` (its column offset + 100) and raw confidence set by the
    tile, so overlapping tiles disagree. Offsets are recovered from the first image, which holds its column
    index."""

    def __init__(self, conf_of_offset):
        self.conf_of_offset = conf_of_offset
        self.calls: list[int] = []

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x0 = int(a[0, 0, 0, 0].item())
        self.calls.append(x0)
        out = torch.empty(a.shape[0], 2, *a.shape[-2:])
        out[:, 0] = x0 + 100.0
        out[:, 1] = self.conf_of_offset(x0)
        return out


def _column_image(h: int, w: int) -> torch.Tensor:
    return torch.arange(w, dtype=torch.float32).expand(1, 3, h, w).clone()


@pytest.mark.parametrize("mode", ["conf_expsigmoid_10_5", "conf_expbeta0.5"])
def test_blend_is_the_confidence_weighted_mean(mode):
    confs = {0: 2.0, 10: -1.0}
    model = _Disagreeing(lambda x0: confs[x0])
    pred, conf = tiled_pred(model, _column_image(8, 50), _column_image(8, 50), (8, 40), overlap=0.5,
                            conf_mode=mode)  # fmt: skip
    assert sorted(model.calls) == [0, 10]
    w0, w1 = (confidence_weight(torch.tensor(confs[x]), mode).item() for x in (0, 10))
    assert torch.all(pred[..., :10] == 100.0) and torch.allclose(pred[..., 40:], torch.tensor(110.0))
    mixed = (w0 * 100 + w1 * 110) / (w0 + w1)
    torch.testing.assert_close(pred[..., 10:40], torch.full((1, 1, 8, 30), mixed))
    torch.testing.assert_close(conf[..., 10:40], torch.full((1, 1, 8, 30), (w0 * 2 - w1) / (w0 + w1)))
    assert w1 > w0 and mixed > 105  # the tile with the lower raw confidence (less uncertainty) counts more


def test_a_much_more_certain_tile_dominates_and_extreme_weights_stay_finite():
    model = _Disagreeing(lambda x0: 200.0 if x0 == 0 else -200.0)  # exp(-beta c) overflows float32
    pred, conf = tiled_pred(model, _column_image(8, 50), _column_image(8, 50), (8, 40), overlap=0.5,
                            conf_mode="conf_expbeta1")  # fmt: skip
    assert torch.isfinite(pred).all() and torch.isfinite(conf).all()
    torch.testing.assert_close(pred[..., 10:40], torch.full((1, 1, 8, 30), 110.0))
    pred, _ = tiled_pred(model, _column_image(8, 50), _column_image(8, 50), (8, 40), overlap=0.5)
    assert torch.all((pred[..., 10:40] - 110).abs() < 1e-3)  # weight ratio e^20 with expsigmoid_10_5


@pytest.mark.parametrize("size, window, overlap", [((37, 53), (16, 24), 0.9), ((33, 47), (32, 16), 0.7),
                                                   ((16, 100), (16, 24), 0.5)])  # fmt: skip
def test_every_pixel_is_predicted_for_odd_sizes(size, window, overlap):
    counts = torch.zeros(size)

    def model(a, b):
        return torch.ones(a.shape[0], 3, *a.shape[-2:])

    def counting(a, b):
        y0, x0 = int(a[0, 0, 0, 0].item()), int(a[0, 1, 0, 0].item())
        counts[y0 : y0 + window[0], x0 : x0 + window[1]] += 1
        return model(a, b)

    rows = torch.arange(size[0], dtype=torch.float32)[:, None].expand(size)
    cols = torch.arange(size[1], dtype=torch.float32)[None, :].expand(size)
    img = torch.stack([rows, cols, rows])[None]
    pred, conf = tiled_pred(counting, img, img, window, overlap=overlap, channels=2)
    assert pred.shape == (1, 2, *size) and conf.shape == (1, 1, *size)
    assert counts.min() >= 1 and torch.isfinite(pred).all()
    n = math.prod(len(tile_offsets(s, w, overlap)) for s, w in zip(size, window))
    assert counts.sum() == n * window[0] * window[1]


def test_small_images_are_upscaled_and_the_values_rescaled_per_axis():
    seen = []

    def model(a, b):
        seen.append(tuple(a.shape[-2:]))
        out = torch.empty(a.shape[0], 3, *a.shape[-2:])
        out[:, 0], out[:, 1], out[:, 2] = 4.0, 6.0, 0.0  # constant flow (4, 6) in the upscaled frame
        return out

    img = torch.randn(1, 3, 10, 30)
    pred, conf = tiled_pred(model, img, img, (16, 32), overlap=0.5, channels=2)
    # factor max(16/10, 32/30) = 1.6 -> (16, 48): one window tall, 1 + ceil(16/16) = 2 windows wide
    assert seen == [(16, 32), (16, 32)]
    assert pred.shape == (1, 2, 10, 30) and conf.shape == (1, 1, 10, 30)
    torch.testing.assert_close(pred[:, 0], torch.full((1, 10, 30), 4.0 * 30 / 48))
    torch.testing.assert_close(pred[:, 1], torch.full((1, 10, 30), 6.0 * 10 / 16))

    def stereo(a, b):
        return torch.cat([torch.full_like(a[:, :1], 8.0), torch.zeros_like(a[:, :1])], 1)

    pred, _ = tiled_pred(stereo, torch.randn(1, 3, 20, 12), torch.randn(1, 3, 20, 12), (16, 16), channels=1)
    # factor 16/12 -> (27, 16): disparity scaled by the width ratio 12/16
    torch.testing.assert_close(pred, torch.full((1, 1, 20, 12), 8.0 * 12 / 16))


def test_bad_model_output_is_reported():
    with pytest.raises(ValueError, match="prediction \\+ confidence"):
        tiled_pred(lambda a, b: a[:, :1], torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), (8, 8))
