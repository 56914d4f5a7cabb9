"""One image pair through a pretrained CroCo: the reference | masked | reconstruction | target panel.

Images of any size are fitted to the size the network was built (trained) with: the centre is cropped to the
network's aspect ratio, then resized (Lanczos when shrinking, bicubic when enlarging), so nothing is stretched.
Resizing rather than tiling: a reconstruction is a picture of what the network learned at its training scale,
and tiles would each get their own mask and cut image 2 into pieces that no longer show the same scene.

The network, the mask and the pictures are those of the training panels (``croco.tasks.reconstruction``): a
reproducible mask drawn from ``seed`` with exactly ``int(ratio * N)`` masked patches, and, for a model trained
with ``norm_pix_loss``, every predicted patch given the mean and standard deviation of the ground-truth patch, as
the official demo (naver/croco ``demo.py``) does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from croco.data.transforms import normalize
from croco.eval.crossview import LoadedNetwork, load_network
from croco.importers.base import SkipPair
from croco.importers.images import read_image, resize_image
from croco.models.masking import check_mask_ratio, num_masked
from croco.tasks.reconstruction import NORM_PIX_NOTE, fixed_mask, reconstruction_views, render_panel

__all__ = [
    "FIT_NOTE",
    "PANEL_LABELS",
    "DemoResult",
    "fit_to_size",
    "load_demo_image",
    "load_demo_network",
    "reconstruct_files",
    "reconstruct_pair",
]

FIT_NOTE = "centre-cropped to the model's aspect ratio, then resized to its input size"
PANEL_LABELS = {
    "reference": "reference (image 2)",
    "masked": "masked image 1",
    "reconstruction": "reconstruction",
    "target": "target (image 1)",
}


@dataclass
class DemoResult:
    """The panel and what it was made of: views (1, 3, H, W) RGB in [0, 1] keyed by ``PANEL_LABELS``'s keys,
    the (1, N) mask (True = masked) and the caption written above the panel."""

    panel: Image.Image
    views: dict[str, torch.Tensor]
    mask: torch.Tensor
    caption: str


def load_demo_network(path: str | os.PathLike) -> LoadedNetwork:
    """A pretraining checkpoint of this project (Lightning ``.ckpt``) or an official-layout ``.pth`` (ours
    exported, ``CroCo.pth``, ``CroCo_V2_*.pth``), loaded strictly with ``weights_only=True``; a bad file is a
    one-line ``CheckpointError``. The network is in eval mode."""
    loaded = load_network(path)
    loaded.net.eval()
    return loaded


def load_demo_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing or unreadable file is a one-line ``ValueError`` naming it."""
    try:
        return read_image(path, exif_transpose=True)  # a phone photo shows as taken
    except SkipPair as e:
        raise ValueError(f"{e.detail} (expected a readable image file)") from None


def fit_to_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop the centre of ``image`` (H, W, 3) to the aspect ratio ``width / height``, then resize it to
    ``height`` x ``width`` (see the module docstring)."""
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"cannot fit an empty {w}x{h} image")
    if w * height <= h * width:  # taller than the model: keep the width, crop rows
        crop_w, crop_h = w, max(1, round(w * height / width))
    else:  # wider: keep the height, crop columns
        crop_w, crop_h = max(1, round(h * width / height)), h
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return resize_image(np.ascontiguousarray(image[top : top + crop_h, left : left + crop_w]), width, height)


def _as_input(image: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(1, 3, height, width) ImageNet-normalised network input of an (H, W, 3) uint8 image."""
    fitted = torch.from_numpy(np.array(fit_to_size(image, height, width))).to(device)  # a writable copy
    return normalize(fitted.permute(2, 0, 1).float().div(255.0).unsqueeze(0))


@torch.no_grad()
def reconstruct_pair(
    loaded: LoadedNetwork,
    image1: np.ndarray,
    image2: np.ndarray,
    *,
    mask_ratio: float = 0.9,
    seed: int = 0,
    paste_visible: bool = False,
    min_cell: int = 192,
) -> DemoResult:
    """Mask ``mask_ratio`` of image 1's patches (reproducibly from ``seed``), reconstruct them from the visible
    ones and image 2, and render the panel. ``paste_visible``: the visible patches of the reconstruction are
    image 1's own pixels (the network gets no loss there). ``min_cell``: smaller images are shown enlarged
(nearest neighbour, whole multiples) to at least this many pixels."""
    ratio = check_mask_ratio(mask_ratio, "mask ratio")
    net = loaded.net
    height, width = net.patch_embed.img_size
    device = next(net.parameters()).device
    img1 = _as_input(image1, height, width, device)
    img2 = _as_input(image2, height, width, device)
    patches = net.patch_embed.num_patches
    mask = fixed_mask(1, patches, ratio, int(seed), device)
    views = reconstruction_views(net, img1, img2, mask, norm_pix_loss=loaded.norm_pix_loss,
                                 paste_visible=paste_visible)  # fmt: skip
    h1, w1 = image1.shape[:2]
    h2, w2 = image2.shape[:2]
    hidden = num_masked(patches, ratio)
    caption = (
        f"Image 1 ({w1}x{h1}) and image 2 ({w2}x{h2}) {FIT_NOTE}, {width}x{height}. "
        f"Mask ratio {ratio:g}: {hidden} of {patches} patches hidden, seed {int(seed)}. "
        + ("Visible patches pasted back. " if paste_visible else "")
        + (NORM_PIX_NOTE if loaded.norm_pix_loss else "Reconstructions are raw pixel predictions.")
    )
    panel = render_panel(views, labels=PANEL_LABELS, title=caption, min_cell=min_cell)
    return DemoResult(panel, views, mask, caption)


def reconstruct_files(
    ckpt: str | os.PathLike,
    img1: str | os.PathLike,
    img2: str | os.PathLike,
    *,
    mask_ratio: float = 0.9,
    seed: int = 0,
    paste_visible: bool = False,
) -> DemoResult:
    """``reconstruct_pair`` from files. The images and the mask ratio are checked first, so that a typo is
    reported before a (possibly large) checkpoint is loaded."""
    image1, image2 = load_demo_image(Path(img1)), load_demo_image(Path(img2))
    check_mask_ratio(mask_ratio, "mask ratio")
    return reconstruct_pair(load_demo_network(ckpt), image1, image2, mask_ratio=mask_ratio, seed=seed,
                            paste_visible=paste_visible)  # fmt: skip
