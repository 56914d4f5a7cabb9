"""CroCo networks for downstream tasks: a pretrained backbone without masking, plus a task head.

The two wrappers of the official code (naver/croco ``models/croco_downstream.py``), with its state-dict names, so
the released CroCo-Stereo and CroCo-Flow checkpoints load strictly:

* ``CroCoDownstreamMonocularEncoder``: the encoder alone on one image (depth, segmentation, classification).
  Keys: ``patch_embed.*``, ``enc_blocks.*``, ``enc_norm.*``, the cosine buffers, ``head.*``.
* ``CroCoDownstreamBinocular``: encoder and decoder on two images without masking; both images go through one
  batched encoder pass when their sizes match. The head sees [encoder blocks of image 1] + [decoder blocks].
  Keys: everything of CroCoNet but ``mask_token`` and ``prediction_head``, plus ``head.*``.

A head is any module with ``setup(net)``, ``forward(features, image_size)`` and a ``return_all_blocks`` flag
(``croco.models.dpt.PixelwiseTaskWithDPT``, ``LinearProbeHead``). A binocular head whose ``needs_image2`` is true
also gets the image-2 encoder tokens: ``forward(features, image_size, image2)``
(``croco.models.pose.RelativePoseHead``).

Fine-tuning helpers shared by every task: ``set_drop_path`` (stochastic depth), ``freeze`` (the backbone or its
first blocks) and ``layer_id`` (the depth of a parameter, for layer-wise lr decay as in BEiT and MAE
fine-tuning).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from croco.models.croco import CroCoNet

__all__ = [
    "CroCoDownstreamBinocular",
    "CroCoDownstreamMonocularEncoder",
    "LinearProbeHead",
    "freeze",
    "layer_id",
    "set_drop_path",
]

DECODER_PARTS = ("decoder_embed", "dec_blocks", "dec_norm", "dec_view_embed")
PRETRAINING_ONLY = ("mask_token", "prediction_head")


def _remove(net: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        if hasattr(net, name):
            delattr(net, name)


class CroCoDownstreamMonocularEncoder(CroCoNet):
    """Encoder + head on one image; ``forward(img)`` -> the head's output (dense: (B, C, H, W))."""

    def __init__(self, head: nn.Module, **croco_kwargs: Any):
        super().__init__(**croco_kwargs)
        _remove(self, PRETRAINING_ONLY + DECODER_PARTS)
        head.setup(self)
        self.head = head

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        features = self.encoder_features(img, return_all_blocks=self.head.return_all_blocks)
        return self.head(features, tuple(img.shape[-2:]))


class CroCoDownstreamBinocular(CroCoNet):
    """Encoder + decoder + head on two images; ``forward(img1, img2)`` -> the head's output."""

    def __init__(self, head: nn.Module, **croco_kwargs: Any):
        if croco_kwargs.get("decoder") == "mae":
            raise ValueError("model.decoder='mae' never sees image 2: a binocular task needs 'cross' or 'cat' "
                             "(start it from a single-view pretraining with finetune.init_decoder=false)")
        super().__init__(**croco_kwargs)
        _remove(self, PRETRAINING_ONLY)
        head.setup(self)
        self.head = head

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if getattr(self.head, "needs_image2", False):
            features, image2 = self.binocular_features(
                img1, img2, return_all_blocks=self.head.return_all_blocks, return_image2=True
            )
            return self.head(features, tuple(img1.shape[-2:]), image2)
        features = self.binocular_features(img1, img2, return_all_blocks=self.head.return_all_blocks)
        return self.head(features, tuple(img1.shape[-2:]))


class LinearProbeHead(nn.Module):
    """MAE's linear-probe head on an encoder without class token: mean of the (normalised) last-block tokens,
    BatchNorm without affine parameters (MAE ``main_linprobe.py``), then a linear classifier."""

    return_all_blocks = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.bn: nn.BatchNorm1d | None = None
        self.fc: nn.Linear | None = None

    def setup(self, net: nn.Module) -> None:
        dim = int(net.croco_kwargs["enc_embed_dim"])
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, self.num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # MAE's linear-probe init
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return self.fc(self.bn(tokens.mean(dim=1)))


# ------------------------------------------------------------------------------------------ fine-tuning
def _depths(net: CroCoNet) -> tuple[int, int]:
    enc = len(net.enc_blocks)
    dec = len(net.dec_blocks) if hasattr(net, "dec_blocks") else 0
    return enc, dec


def set_drop_path(net: CroCoNet, rate: float) -> None:
    """Stochastic depth with the linear rule of DeiT/BEiT/MAE: block ``i`` of the encoder-then-decoder stack
    drops its residual branches with probability ``rate * i / (n - 1)``. 0 switches it off."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path={rate!r}: expected a rate in [0, 1)")
    blocks = list(net.enc_blocks) + (list(net.dec_blocks) if hasattr(net, "dec_blocks") else [])
    rates = torch.linspace(0.0, rate, len(blocks)).tolist()
    for block, r in zip(blocks, rates):
        block.drop_path = DropPath(r) if r > 0 else nn.Identity()


def freeze(net: CroCoNet, what: str | int | None) -> list[str]:
    """Freeze part of the backbone; returns the frozen parameter names.

    ``None`` or 0: nothing. ``"backbone"``: everything but ``head.*``. An integer ``k``: the patch embedding and
    the first ``k`` encoder blocks (the layers closest to the pixels)."""
    if what is None or what == 0:
        return []
    enc, _ = _depths(net)
    if what == "backbone":
        def frozen(name: str) -> bool:
            return not name.startswith("head.")
    elif isinstance(what, int) and not isinstance(what, bool) and 0 < what <= enc:
        def frozen(name: str) -> bool:
            return name.startswith("patch_embed.") or (
                name.startswith("enc_blocks.") and int(name.split(".")[1]) < what
            )
    else:
        raise ValueError(f"freeze={what!r}: expected null, 'backbone' or a number of encoder blocks in 1..{enc}")
    names = []
    for name, param in net.named_parameters():
        if frozen(name):
            param.requires_grad_(False)
            names.append(name)
    return names


def layer_id(net: CroCoNet, name: str) -> tuple[int, int]:
    """(depth of parameter ``name``, number of depths), for layer-wise lr decay: the lr of depth ``i`` is
    scaled by ``decay ** (num - 1 - i)``.

    Depth 0: patch embedding (and mask token); encoder block ``i``: ``i + 1``; with a decoder, its input
    projection, the encoder's last norm and decoder block 0 share ``enc_depth + 1`` and decoder block ``j`` is
    ``enc_depth + 1 + j``; the last norm and the head form the top depth, which keeps the full lr."""
    enc, dec = _depths(net)
    top = enc + dec + 1
    part = name.split(".")[0]
    if part in ("patch_embed", "mask_token", "enc_pos_embed"):
        return 0, top + 1
    if part == "enc_blocks":
        return int(name.split(".")[1]) + 1, top + 1
    if dec and part in ("enc_norm", "decoder_embed", "dec_view_embed", "dec_pos_embed"):
        return enc + 1, top + 1
    if part == "dec_blocks":
        return enc + 1 + int(name.split(".")[1]), top + 1
    return top, top + 1
