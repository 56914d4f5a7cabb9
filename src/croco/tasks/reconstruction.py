"""From network outputs to pictures and a pixel-space metric: un-normalised reconstructions, masked-patch
PSNR, and the reference | masked | reconstruction | target panel (optionally with a reconstruction from
another scene's view 2, which shows how much of a reconstruction the second view is responsible for).

With ``norm_pix_loss`` the network predicts every patch *normalised by its own mean and std*, so its raw
output is not an image. As in the official demo, a reconstruction is made visible by giving each predicted
patch the mean and standard deviation of the corresponding *ground-truth* patch (unbiased variance + 1e-6).
The PSNR on masked patches is computed on that image, in [0, 1] RGB after undoing the ImageNet
normalisation. It therefore measures the predicted *structure* inside each patch, not its average colour
or contrast, which come from the target: compare it across runs, not with PSNRs of methods that predict raw pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from croco.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from croco.eval.crossview import fixed_mask  # one definition for validation, panels and the health metric
from croco.models.criterion import patch_stats

__all__ = [
    "NORM_PIX_NOTE",
    "OTHER_RECONSTRUCTION",
    "PANEL_COLUMNS",
    "fixed_mask",
    "masked_psnr",
    "patches_to_rgb",
    "reconstruction_views",
    "render_panel",
    "unnormalize_prediction",
]

PANEL_COLUMNS = ("reference", "masked", "reconstruction", "target")
OTHER_RECONSTRUCTION = "other_reconstruction"  # the view of ``reconstruction_views(..., other_img2=...)``
NORM_PIX_NOTE = (
    "Reconstructions borrow each target patch's mean and variance (the official de-normalisation of a "
    "norm-pix model): only the structure inside each patch is predicted."
)


def unnormalize_prediction(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Give per-patch-normalised predictions (B, N, P) the per-patch mean/std of ``target`` (as the demo does)."""
    mean, std = patch_stats(target, eps)
    return pred * std + mean


def patches_to_rgb(patches: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """ImageNet-normalised patches (B, N, p*p*C), channel fastest, -> RGB in [0, 1] (same layout), clamped."""
    B, N, P = patches.shape
    x = patches.float().reshape(B, N, P // channels, channels)
    mean = x.new_tensor(IMAGENET_MEAN[:channels])
    std = x.new_tensor(IMAGENET_STD[:channels])
    return (x * std + mean).clamp(0.0, 1.0).reshape(B, N, P)


def masked_psnr(pred_rgb: torch.Tensor, target_rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, peak 1) over the masked patches of (B, N, P) RGB patches in [0, 1]."""
    per_patch = ((pred_rgb.float() - target_rgb.float()) ** 2).mean(dim=-1)  # (B, N)
    weights = mask.to(per_patch.dtype)
    mse = (per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _reconstruct(
    net: torch.nn.Module,
    img1: torch.Tensor,
    img2: torch.Tensor,
    mask: torch.Tensor,
    norm_pix_loss: bool,
    paste_visible: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB patches (B, N, P) in [0, 1] of the reconstruction and of the target, and the mask used."""
    pred, mask, target = net(img1, img2, mask)
    pred = pred.float()
    target = target.float()
    if norm_pix_loss:
        pred = unnormalize_prediction(pred, target)
    rec = patches_to_rgb(pred)
    tgt = patches_to_rgb(target)
    if paste_visible:
        keep = mask.unsqueeze(-1).to(rec.dtype)
        rec = rec * keep + tgt * (1 - keep)
    return rec, tgt, mask


@torch.no_grad()
def reconstruction_views(
    net: torch.nn.Module,
    img1: torch.Tensor,
    img2: torch.Tensor,
    mask: torch.Tensor,
    *,
    norm_pix_loss: bool = True,
    paste_visible: bool = True,
    other_img2: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Run the pretraining pass and return the four panel views as (B, 3, H, W) RGB in [0, 1].

    ``reconstruction`` shows the prediction on masked patches and, with ``paste_visible``, the input on the
    visible ones (those carry no loss, so the network's output there is not meaningful). With ``other_img2``
    (e.g. view 2s of other scenes), ``other_reconstruction`` is the same reconstruction, same mask, from that
    view 2 instead: if it looks as good, the network did not need the real second view."""
    rec, tgt, mask = _reconstruct(net, img1, img2, mask, norm_pix_loss, paste_visible)
    keep = mask.unsqueeze(-1).to(rec.dtype)
    masked = tgt * (1 - keep)
    grid = net.patch_embed.grid(*img1.shape[-2:])
    grid2 = net.patch_embed.grid(*img2.shape[-2:])
    ref = patches_to_rgb(net.patchify(img2.float()))
    views = {
        "reference": net.unpatchify(ref, grid=grid2),
        "masked": net.unpatchify(masked, grid=grid),
        "reconstruction": net.unpatchify(rec, grid=grid),
        "target": net.unpatchify(tgt, grid=grid),
    }
    if other_img2 is not None:
        other, _, _ = _reconstruct(net, img1, other_img2, mask, norm_pix_loss, paste_visible)
        views[OTHER_RECONSTRUCTION] = net.unpatchify(other, grid=grid)
    return views


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide in the panel's font."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def render_panel(
    views: Mapping[str, torch.Tensor],
    columns: Sequence[str] = PANEL_COLUMNS,
    *,
    captions: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
    gap: int = 2,
    header: int = 14,
    min_cell: int = 96,
) -> Image.Image:
    """One row per sample, one column per view, under a header row of column names (``labels`` renames them;
    names wider than their column wrap onto more lines) and an optional ``title`` wrapped to the panel's
    width. Small images are upscaled (nearest) to ``min_cell`` pixels so 64-pixel smoke panels stay
    readable."""
    batch = views[columns[0]].shape[0]
    heights = [views[c].shape[-2] for c in columns]
    widths = [views[c].shape[-1] for c in columns]
    scale = max(1, math.ceil(min_cell / max(1, min(heights))))
    cell_h = max(heights) * scale
    cell_ws = [w * scale for w in widths]
    width = sum(cell_ws) + gap * (len(columns) + 1)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [_wrap(measure, (labels or {}).get(c, c), cw - 4) for c, cw in zip(columns, cell_ws, strict=True)]
    title_lines = _wrap(measure, title, width - 2 * gap - 4) if title else []
    top = header * len(title_lines)
    heading = header * max(len(n) for n in names)
    height = top + heading + batch * (cell_h + gap) + gap
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(title_lines):
        draw.text((gap + 2, 1 + i * header), line, fill=(0, 0, 0))
    x = gap
    for lines, cw in zip(names, cell_ws, strict=True):
        for i, line in enumerate(lines):
            draw.text((x + 2, top + 1 + i * header), line, fill=(0, 0, 0))
        x += cw + gap
    for row in range(batch):
        y = top + heading + row * (cell_h + gap)
        x = gap
        for c, cw in zip(columns, cell_ws, strict=True):
            tile = Image.fromarray(_to_uint8(views[c][row]))
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
            panel.paste(tile, (x, y))
            x += cw + gap
        if captions is not None:  # wrapped to the panel's width, over the row's images
            for i, line in enumerate(_wrap(measure, captions[row], width - 2 * gap - 4)):
                draw.text((gap + 2, y + 2 + i * header), line, fill=(255, 255, 0))
    return panel
