"""Pictures of dense predictions: scalar maps through a colour map, label maps through a fixed palette.

All functions take and return torch tensors; RGB outputs are (B, 3, H, W) floats in [0, 1], ready for the
panels of ``croco.tasks``.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch

__all__ = ["colorize", "colorize_labels", "flow_to_color", "label_palette"]

INVALID_RGB = (0.0, 0.0, 0.0)
"""Colour of pixels without a value (no ground truth, ignored labels)."""


def colorize(
    values: torch.Tensor,
    vmin: torch.Tensor | float | None = None,
    vmax: torch.Tensor | float | None = None,
    cmap: str = "magma",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) scalars -> (B, 3, H, W) RGB. ``vmin``/``vmax``: scalars or per-image (B,)
    tensors (default: each image's own valid range, so that a row of columns can share one scale when given);
    invalid pixels are black."""
    v = values.detach().float().cpu()
    v = v[:, 0] if v.ndim == 4 else v
    mask = torch.isfinite(v) if valid is None else (valid.detach().cpu().reshape(v.shape).bool() & torch.isfinite(v))
    B = v.shape[0]

    def per_image(bound, reduce) -> torch.Tensor:
        if bound is None:
            out = [reduce(v[i][mask[i]]) if mask[i].any() else torch.tensor(0.0) for i in range(B)]
            return torch.stack(out)
        return torch.as_tensor(bound, dtype=torch.float32).cpu().expand(B).clone()

    lo, hi = per_image(vmin, torch.min), per_image(vmax, torch.max)
    scaled = (v - lo.view(B, 1, 1)) / (hi - lo).clamp_min(1e-8).view(B, 1, 1)
    table = matplotlib.colormaps[cmap]
    rgb = torch.from_numpy(table(scaled.clamp(0, 1).nan_to_num(0).numpy())[..., :3]).float()
    rgb[~mask] = torch.tensor(INVALID_RGB)
    return rgb.permute(0, 3, 1, 2)


def label_palette(num_classes: int, seed: int = 0) -> torch.Tensor:
    """(num_classes, 3) distinct-looking colours in [0, 1]: matplotlib's tab20 first, then fixed random ones."""
    base = np.asarray(matplotlib.colormaps["tab20"].colors, dtype=np.float32)
    if num_classes <= len(base):
        return torch.from_numpy(base[:num_classes].copy())
    extra = np.random.default_rng(seed).uniform(0.15, 0.95, size=(num_classes - len(base), 3)).astype(np.float32)
    return torch.from_numpy(np.concatenate([base, extra]))


def colorize_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, 3, H, W) RGB; ``ignore_index`` and out-of-range labels are black."""
    labels = labels.detach().long().cpu()
    palette = torch.cat([label_palette(num_classes), torch.tensor([INVALID_RGB])])
    index = labels.clone()
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad |= labels == ignore_index
    index[bad] = num_classes
    return palette[index].permute(0, 3, 1, 2)


def _colour_wheel() -> torch.Tensor:
    """The Middlebury flow colour wheel (Baker et al., IJCV 2011): 55 hues, red -> yellow -> green -> cyan ->
    blue -> magenta -> red, as (55, 3) in [0, 1]."""
    segments = [(15, (1, 0, 0), (1, 1, 0)), (6, (1, 1, 0), (0, 1, 0)), (4, (0, 1, 0), (0, 1, 1)),
                (11, (0, 1, 1), (0, 0, 1)), (13, (0, 0, 1), (1, 0, 1)), (6, (1, 0, 1), (1, 0, 0))]  # fmt: skip
    rows = []
    for count, start, end in segments:
        t = torch.arange(count, dtype=torch.float32)[:, None] / count
        rows.append(torch.tensor(start) * (1 - t) + torch.tensor(end) * t)
    return torch.cat(rows)


def flow_to_color(flow: torch.Tensor, max_norm: torch.Tensor | float | None = None) -> torch.Tensor:
    """(B, 2, H, W) optical flow -> (B, 3, H, W) RGB in the Middlebury colour coding: the hue is the direction,
    the saturation the magnitude relative to ``max_norm`` (default: each image's largest valid magnitude); pixels
    without a finite flow are black."""
    flow = flow.detach().float().cpu()
    valid = torch.isfinite(flow).all(dim=1)
    u, v = flow[:, 0].nan_to_num(0, 0, 0), flow[:, 1].nan_to_num(0, 0, 0)
    u, v = torch.where(valid, u, 0.0), torch.where(valid, v, 0.0)
    norm = torch.sqrt(u**2 + v**2)
    B = flow.shape[0]
    if max_norm is None:
        peak = torch.stack([norm[i][valid[i]].max() if valid[i].any() else torch.tensor(1.0) for i in range(B)])
    else:
        peak = torch.as_tensor(max_norm, dtype=torch.float32).expand(B).clone()
    radius = (norm / peak.clamp_min(1e-8).view(B, 1, 1)).clamp(max=1.0)
    wheel = _colour_wheel()
    n = wheel.shape[0]
    angle = torch.atan2(-v, -u) / torch.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (n - 1)
    k0 = position.floor().long() % n
    k1 = (k0 + 1) % n
    f = (position - position.floor())[..., None]
    colour = wheel[k0] * (1 - f) + wheel[k1] * f  # (B, H, W, 3)
    colour = 1 - radius[..., None] * (1 - colour)  # white at rest, saturated at max_norm
    colour[~valid] = torch.tensor(INVALID_RGB)
    return colour.permute(0, 3, 1, 2)
