"""Tiled inference of the binocular dense models (CroCo-Stereo, CroCo-Flow) on images larger than their window.

The official ``tiled_pred`` of naver/croco ``stereoflow/engine.py``: the same window is cropped from both images
at overlapping positions, the model predicts each tile, and the tiles are blended per pixel with weights from
their predicted confidence.

* Windows per axis of length ``L``: ``n = 1 + ceil((L - win) / ((1 - overlap) * win))`` (1 when ``L == win``),
  offsets ``linspace(0, L - win, n)`` rounded to integers: the first window starts at 0, the last one ends at
  ``L``, so every pixel is predicted at least once.
* Weights (:func:`confidence_weight`), from the raw confidence ``c`` of the head (the last channel):
  ``"conf_expsigmoid_{beta}_{gamma}"``: ``w = exp(-beta * 2 * (sigmoid(c / gamma) - 0.5))``, in
  ``(exp(-beta), exp(beta))``; ``"conf_expbeta{beta}"``: ``w = exp(-beta * c)``. The weight DEcreases with
  ``c``: every CroCo stereo/flow loss (``croco.models.stereoflow_losses``) divides the error by a Laplacian
  scale that increases with ``c``, so a high raw confidence is a high predicted uncertainty and must count less.
  This is the official sign (``exp(-beta ...)``). The official default is ``conf_expsigmoid_10_5``.
* Output: the weighted mean of the tile predictions and, as ``conf``, the weighted mean of the tile RAW
  confidences (the official ``c``), so it stays in the head's space (``confidence_from_raw`` applies to it).
  The blending is accumulated with a running per-pixel maximum of the log-weights (online log-sum-exp), so
  ``conf_expbeta`` weights cannot overflow to inf / underflow to 0 and give NaN.
* One window covering the whole image returns the model output itself (bit-exact).

Images smaller than the window on an axis: as officially, both images are upscaled (bicubic,
``align_corners=False``) by the single factor ``max(win_h / H, win_w / W)`` (aspect ratio kept) so that the
window fits, tiled, and the prediction and confidence are resized back to (H, W). The disparity / flow values are
then multiplied by the actual per-axis ratio of the sizes: flow ``u`` and disparity by ``W / W_up``, flow ``v`` by
``H / H_up`` (the ratio of the rounded sizes, not the factor). Versions of the official code compute the
factor as ``max(win_w / W, win_h / W)`` (the window height over the image WIDTH), which can leave the window
taller than the upscaled image. Upscaling was preferred to padding because the networks never saw padded borders
during training, and it is what the released models were evaluated with.

Other deviations: no loss is computed here (the official function also returns the mean tiled loss); batching of
several tiles per model call is left to ``model_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["confidence_weight", "parse_conf_mode", "tile_offsets", "tiled_pred"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def tile_offsets(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one axis (the official ``_overlapping``)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap}: expected a value in [0, 1)")
    if window <= 0 or length < window:
        raise ValueError(f"cannot tile an axis of {length} pixels with a window of {window}")
    n = 1 + math.ceil((length - window) / ((1.0 - overlap) * window))
    return [round(x) for x in torch.linspace(0, length - window, n, dtype=torch.float64).tolist()]


def parse_conf_mode(conf_mode: str) -> tuple[str, float, float]:
    """("expsigmoid" | "expbeta", beta, gamma) from ``conf_expsigmoid_{beta}_{gamma}`` or ``conf_expbeta{beta}``
    (gamma is 1 for the latter)."""
    try:
        if conf_mode.startswith("conf_expsigmoid_"):
            beta, gamma = map(float, conf_mode[len("conf_expsigmoid_") :].split("_"))
            return "expsigmoid", beta, gamma
        if conf_mode.startswith("conf_expbeta"):
            return "expbeta", float(conf_mode[len("conf_expbeta") :]), 1.0
    except ValueError:
        pass
    raise ValueError(
        f"conf_mode={conf_mode!r}: expected 'conf_expsigmoid_<beta>_<gamma>' or 'conf_expbeta<beta>'"
    )


def _log_weight(conf: torch.Tensor, conf_mode: str) -> torch.Tensor:
    kind, beta, gamma = parse_conf_mode(conf_mode)
    if kind == "expsigmoid":
        return -beta * 2.0 * (torch.sigmoid(conf / gamma) - 0.5)
    return -beta * conf


def confidence_weight(conf: torch.Tensor, conf_mode: str = "conf_expsigmoid_10_5") -> torch.Tensor:
    """The blending weight of a pixel from its raw confidence ``conf``; decreases with ``conf``."""
    return _log_weight(conf.float(), conf_mode).exp()


def _resize_values(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, C, h, w) disparity (C = 1) or flow (C = 2) map to ``size`` and rescale its values: x
    components by the width ratio, y components by the height ratio."""
    h, w = values.shape[-2:]
    out = F.interpolate(values, size=size, mode="bicubic", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h][: values.shape[1]], dtype=out.dtype, device=out.device)
    return out * scale.view(1, -1, 1, 1)


@torch.no_grad()
def tiled_pred(
    model_fn: ModelFn,
    img1: torch.Tensor,
    img2: torch.Tensor,
    window: tuple[int, int],
    overlap: float = 0.7,
    conf_mode: str = "conf_expsigmoid_10_5",
    channels: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict a (B, 3, H, W) image pair tile by tile; returns (prediction (B, C, H, W), raw confidence
    (B, 1, H, W)), float32.

    ``model_fn(crop1, crop2)`` maps two (B, 3, h, w) crops, ``window = (h, w)``, to (B, C + 1, h, w) (the DPT head
    output, confidence last); ``channels`` is C (1: disparity, 2: flow). See the module docstring."""
    if img1.shape != img2.shape or img1.ndim != 4:
        raise ValueError(f"expected two (B, 3, H, W) images of the same size, got {tuple(img1.shape)}, "
                         f"{tuple(img2.shape)}")  # fmt: skip
    if channels not in (1, 2):
        raise ValueError(f"channels={channels}: expected 1 (disparity) or 2 (flow)")
    parse_conf_mode(conf_mode)
    win_h, win_w = int(window[0]), int(window[1])
    batch, _, height, width = img1.shape
    original = (height, width)
    rescale = height < win_h or width < win_w
    if rescale:
        factor = max(win_h / height, win_w / width)
        size = (max(win_h, round(height * factor)), max(win_w, round(width * factor)))
        img1 = F.interpolate(img1, size=size, mode="bicubic", align_corners=False)
        img2 = F.interpolate(img2, size=size, mode="bicubic", align_corners=False)
        height, width = size

    rows, cols = tile_offsets(height, win_h, overlap), tile_offsets(width, win_w, overlap)
    if len(rows) == 1 and len(cols) == 1 and not rescale:  # one window: the model output itself
        out = model_fn(img1, img2)
        _check(out, batch, channels, (win_h, win_w))
        return out[:, :channels].float(), out[:, channels:].float()

    device = img1.device
    acc_pred = torch.zeros(batch, channels, height, width, device=device)
    acc_conf = torch.zeros(batch, 1, height, width, device=device)
    acc_weight = torch.zeros(batch, 1, height, width, device=device)
    max_log_w = torch.full((batch, 1, height, width), -torch.inf, device=device)
    for y in rows:
        for x in cols:
            sy, sx = slice(y, y + win_h), slice(x, x + win_w)
            out = model_fn(img1[..., sy, sx], img2[..., sy, sx])
            _check(out, batch, channels, (win_h, win_w))
            pred, conf = out[:, :channels].float(), out[:, channels:].float()
            log_w = _log_weight(conf, conf_mode)
            new_max = torch.maximum(max_log_w[..., sy, sx], log_w)
            old = torch.exp(max_log_w[..., sy, sx] - new_max)  # rescales what was accumulated so far
            w = torch.exp(log_w - new_max)
            acc_pred[..., sy, sx] = acc_pred[..., sy, sx] * old + w * pred
            acc_conf[..., sy, sx] = acc_conf[..., sy, sx] * old + w * conf
            acc_weight[..., sy, sx] = acc_weight[..., sy, sx] * old + w
            max_log_w[..., sy, sx] = new_max
    pred, conf = acc_pred / acc_weight, acc_conf / acc_weight
    if rescale:
        pred = _resize_values(pred, original)
        conf = F.interpolate(conf, size=original, mode="bicubic", align_corners=False)
    return pred, conf


def _check(out: torch.Tensor, batch: int, channels: int, window: tuple[int, int]) -> None:
    expected = (batch, channels + 1, *window)
    if tuple(out.shape) != expected:
        raise ValueError(
            f"model_fn returned {tuple(out.shape)}, expected {expected} (prediction + confidence)"
        )
