"""The DPT head of the CroCo downstream models: dense predictions from four token maps of a ViT.

Numerically the official ``PixelwiseTaskWithDPT`` and ``DPTOutputAdapter`` (naver/croco
``models/head_downstream.py`` and ``models/dpt_block.py``, derived from MultiMAE and DPT, Ranftl et al., ICCV
2021), with the same module names, so the released CroCo-Stereo / CroCo-Flow heads load strictly:

1. *Reassemble*: the tokens of four hooked blocks, each (B, h*w, C) with h, w = H/p, W/p, become maps
   (B, C, h, w); a 1x1 conv to ``layer_dims[i]`` and a resampling put them at 4x, 2x, 1x and 1/2x the token
   grid (transposed convs 4x4/4 and 2x2/2, identity, a 3x3 conv of stride 2).
2. *Project*: bias-free 3x3 convs bring all four to ``feature_dim`` channels (``scratch.layer{1..4}_rn``).
3. *Fuse*: RefineNet blocks from the coarsest map up (residual conv units, x2 bilinear upsampling,
   ``align_corners=True``, 1x1 out conv).
4. *Head*: 3x3 conv to ``feature_dim // 2``, x2 bilinear, 3x3 conv to ``last_dim``, ReLU, 1x1 conv to
   ``num_channels``, giving (B, num_channels, H, W) with no final activation.

The last upsampling goes to the image size rather than x2, so other patch sizes than 16 also give full-resolution
outputs (x1 for 8-pixel patches); for 16-pixel patches it is the official x2.

State-dict names: the official adapter registers its modules twice, as ``act_{1..4}_postprocess`` and in the
list ``act_postprocess``, and the projections as ``scratch.layer{1..4}_rn`` and ``scratch.layer_rn``; both
aliases are kept here (same tensors), because the released checkpoints hold both.

Any H, W that are multiples of the patch size work. The official fusion needs an even token grid (H, W
multiples of 32 with 16-pixel patches): the stride-2 map of an odd grid of side n has side (n + 1) / 2, is
upsampled to n + 1 and no longer matches the next map. Here each upsampled map is cropped to the size of the map
it is fused with (as DUSt3R does for the coarsest one), which changes nothing on even grids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPTOutputAdapter", "PixelwiseTaskWithDPT", "default_hooks"]


def default_hooks(enc_depth: int, dec_depth: int | None = None) -> list[int]:
    """The official choice of the four hooked blocks (indices into [encoder blocks] + [decoder blocks]).

    Encoder only: every ``enc_depth // 4`` blocks ending at the last one ([2, 5, 8, 11] for ViT-B). Encoder +
    decoder: every ``step`` blocks ending at the last decoder block, with the official steps 3, 4, 8 for decoder
    depths 8, 12, 24 ([10, 13, 16, 19] for ViT-B + the 8-block decoder: the first hook is an encoder block that
    is not the last one). ``step = ceil(dec_depth / 3)`` gives those three and extends them to other depths."""
    if dec_depth is None:
        step = max(enc_depth // 4, 1)
        last = enc_depth - 1
    else:
        step = math.ceil(dec_depth / 3)
        last = enc_depth + dec_depth - 1
    hooks = [last - i * step for i in range(3, -1, -1)]
    if hooks[0] < 0:
        raise ValueError(f"default DPT hooks {hooks} for enc_depth={enc_depth}, dec_depth={dec_depth}: "
                         "the network is too shallow; pass hooks_idx explicitly")  # fmt: skip
    return hooks


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias (the official ``ResidualConvUnit_custom``, no BN)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion (the official ``FeatureFusionBlock_custom``): add the residual-refined skip map to the
    coarser path, refine, upsample x2 (bilinear, align_corners=True), 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            # an odd token grid makes the upsampled coarser path one larger than the skip map: crop it
            path = path[..., : skip.shape[-2], : skip.shape[-1]] + self.resConfUnit1(skip)
        out = self.resConfUnit2(path)
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class _Scratch(nn.Module):
    """Projections to ``feature_dim`` and the fusion blocks, under the official names (``scratch.*``)."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int):
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], feature_dim, kernel_size=3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], feature_dim, kernel_size=3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], feature_dim, kernel_size=3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], feature_dim, kernel_size=3, padding=1, bias=False)
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FeatureFusionBlock(feature_dim)
        self.refinenet2 = FeatureFusionBlock(feature_dim)
        self.refinenet3 = FeatureFusionBlock(feature_dim)
        self.refinenet4 = FeatureFusionBlock(feature_dim)


class _UpsampleTo(nn.Module):
    """Bilinear resampling (align_corners=True) to a given size, in the official ``head`` Sequential where the
    official code upsamples x2: with 16-pixel patches both are the same operation."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class DPTOutputAdapter(nn.Module):
    """Four hooked token maps -> (B, num_channels, H, W). ``dim_tokens``: the channel count of each hook."""

    def __init__(
        self,
        dim_tokens: Sequence[int],
        hooks: Sequence[int],
        patch_size: int = 16,
        num_channels: int = 1,
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 32,
    ):
        super().__init__()
        if len(hooks) != 4 or len(dim_tokens) != 4 or len(layer_dims) != 4:
            raise ValueError(f"DPT needs 4 hooks, token dims and layer dims; got hooks={list(hooks)}, "
                             f"dim_tokens={list(dim_tokens)}, layer_dims={list(layer_dims)}")  # fmt: skip
        self.hooks = [int(h) for h in hooks]
        self.patch_size = int(patch_size)
        self.num_channels = int(num_channels)
        self.scratch = _Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1),
            _UpsampleTo(),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(last_dim, num_channels, kernel_size=1),
        )
        d = layer_dims
        self.act_1_postprocess = nn.Sequential(
            nn.Conv2d(dim_tokens[0], d[0], kernel_size=1), nn.ConvTranspose2d(d[0], d[0], kernel_size=4, stride=4)
        )
        self.act_2_postprocess = nn.Sequential(
            nn.Conv2d(dim_tokens[1], d[1], kernel_size=1), nn.ConvTranspose2d(d[1], d[1], kernel_size=2, stride=2)
        )
        self.act_3_postprocess = nn.Sequential(nn.Conv2d(dim_tokens[2], d[2], kernel_size=1))
        self.act_4_postprocess = nn.Sequential(
            nn.Conv2d(dim_tokens[3], d[3], kernel_size=1), nn.Conv2d(d[3], d[3], kernel_size=3, stride=2, padding=1)
        )
        self.act_postprocess = nn.ModuleList(
            [self.act_1_postprocess, self.act_2_postprocess, self.act_3_postprocess, self.act_4_postprocess]
        )

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        h, w = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        maps = []
        for i, hook in enumerate(self.hooks):
            x = tokens[hook]
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (B, h*w, C) -> (B, C, h, w)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](x)))
        path = self.scratch.refinenet4(maps[3])
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        path = self.scratch.refinenet1(path, maps[0])  # at 8x the token grid
        conv1, upsample, conv2, relu, conv3 = self.head
        return conv3(relu(conv2(upsample(conv1(path), tuple(image_size)))))


class PixelwiseTaskWithDPT(nn.Module):
    """The official dense head: set up against a network (``setup``), then ``head(features, (H, W))``.

    Args:
        hooks_idx: the four hooked blocks; None: ``default_hooks`` of the network it is set up on.
        layer_dims, feature_dim, last_dim, num_channels: DPT sizes (official defaults).
        postprocess: optional callable applied to the (B, num_channels, H, W) output.
    """

    return_all_blocks = True  # the network must hand over every block's output

    def __init__(
        self,
        *,
        hooks_idx: Sequence[int] | None = None,
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 32,
        num_channels: int = 1,
        postprocess: nn.Module | None = None,
    ):
        super().__init__()
        self.hooks_idx = None if hooks_idx is None else [int(h) for h in hooks_idx]
        self.layer_dims = [int(d) for d in layer_dims]
        self.feature_dim = int(feature_dim)
        self.last_dim = int(last_dim)
        self.num_channels = int(num_channels)
        self.postprocess = postprocess
        self.dpt: DPTOutputAdapter | None = None

    def setup(self, net: nn.Module) -> None:
        """Build the adapter for ``net`` (a CroCoNet or a downstream wrapper): its ``croco_kwargs`` give the sizes,
        and it has a decoder when it has ``dec_blocks`` (as the official ``setup(croconet)`` decides)."""
        kwargs = net.croco_kwargs
        enc_depth, enc_dim = int(kwargs["enc_depth"]), int(kwargs["enc_embed_dim"])
        dec_depth = int(kwargs["dec_depth"]) if hasattr(net, "dec_blocks") else None
        if self.hooks_idx is None:
            self.hooks_idx = default_hooks(enc_depth, dec_depth)
        total = enc_depth + (dec_depth or 0)
        if any(not 0 <= h < total for h in self.hooks_idx):
            raise ValueError(f"hooks_idx={self.hooks_idx}: expected indices into the {total} blocks of the network")
        dims = [enc_dim if h < enc_depth else int(kwargs["dec_embed_dim"]) for h in self.hooks_idx]
        self.dpt = DPTOutputAdapter(dims, self.hooks_idx, int(kwargs["patch_size"]), self.num_channels,
                                    self.layer_dims, self.feature_dim, self.last_dim)  # fmt: skip

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        if self.dpt is None:
            raise RuntimeError("PixelwiseTaskWithDPT.setup() must be called before forward")
        out = self.dpt(features, image_size)
        return self.postprocess(out) if self.postprocess is not None else out
