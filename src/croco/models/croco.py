"""CroCoNet: cross-view completion (CroCo v1, NeurIPS 2022; CroCo v2, ICCV 2023).

Image 1 is split into patches, 90% of them are masked, and a ViT encoder sees the visible ones. Image 2, a
second view of the same scene, goes through the same (siamese) encoder unmasked. A decoder fills image 1's
sequence with mask tokens and reconstructs the masked patches from its visible ones plus image 2:

* ``decoder="cross"`` (the released models): each decoder block self-attends over image 1 and cross-attends to
  the fixed image-2 memory (``DecoderBlock``).
* ``decoder="cat"`` (the paper's CatBlock ablation): image-1 and image-2 decoder tokens, each with a learned
  per-view embedding, are concatenated and processed by plain self-attention blocks; predictions are read from
  the image-1 part.
* ``decoder="mae"`` (the single-view baseline, MAE): the same plain self-attention blocks over image 1's tokens
  alone; image 2 is neither encoded nor seen, so the network can only inpaint from image 1's visible patches.

Constructor arguments, module names and numerics are those of the official implementation, so the released
checkpoints load with ``strict=True`` (see ``croco.models.checkpoints``). Unlike the official model, any image
size divisible by the patch size is accepted at run time, square or not; with cosine positions the stored
buffers are then resampled bicubically, as the official ``interpolate_pos_embed`` does (see ``pos_resize``).

The pretraining pass compiles without graph breaks (``torch.compile``): the visible tokens are gathered with
indices (MAE-style, in ascending position order, so the result is bit-identical to the official boolean
indexing), every shape is known from the sizes and the mask ratio, and masks the network draws itself need
no check, so nothing reads a value back to the host. Two run-time settings change no weights and are not
constructor arguments of the official model (exports leave them out): ``attn_backend`` (see
``croco.models.blocks``) and ``channels_last`` (the patch-embedding convolution in NHWC layout).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import nn

from croco.models.blocks import (
    Attention,
    Block,
    CrossAttention,
    DecoderBlock,
    NormLayer,
    PatchEmbed,
    check_attn_backend,
)
from croco.models.masking import RandomMask, num_masked, visible_indices
from croco.models.pos_embed import RoPE2D, resample_pos_embed, rope_base_from_name, sincos_pos_embed_2d

__all__ = ["DECODERS", "POS_RESIZE_MODES", "CroCoNet", "PosResize"]

DECODERS = ("cross", "cat", "mae")
PosResize = Literal["bicubic", "analytic"]
POS_RESIZE_MODES: tuple[str, ...] = get_args(PosResize)
CosineBuffer = Literal["enc_pos_embed", "dec_pos_embed"]


class _CachedPos(NamedTuple):
    """A cosine embedding at another grid and what it was computed from: reused only while the buffer is the
    same tensor (a strong reference, so its identity cannot be recycled), unmodified and in the same storage."""

    source: torch.Tensor
    version: int
    data_ptr: int
    value: torch.Tensor

    def matches(self, buffer: torch.Tensor) -> bool:
        return self.source is buffer and self.version == buffer._version and self.data_ptr == buffer.data_ptr()


class CroCoNet(nn.Module):
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        mask_ratio: float = 0.9,
        enc_embed_dim: int = 768,
        enc_depth: int = 12,
        enc_num_heads: int = 12,
        dec_embed_dim: int = 512,
        dec_depth: int = 8,
        dec_num_heads: int = 16,
        mlp_ratio: float = 4,
        norm_layer: NormLayer = partial(nn.LayerNorm, eps=1e-6),  # noqa: B008 - the official signature
        norm_im2_in_dec: bool = True,
        pos_embed: str = "cosine",
        decoder: str = "cross",
        attn_backend: str | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
        img_size = img_size if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.croco_kwargs: dict[str, Any] = {  # the constructor arguments, as plain data (export, checkpoints)
            "img_size": img_size, "patch_size": patch_size, "mask_ratio": mask_ratio,
            "enc_embed_dim": enc_embed_dim, "enc_depth": enc_depth, "enc_num_heads": enc_num_heads,
            "dec_embed_dim": dec_embed_dim, "dec_depth": dec_depth, "dec_num_heads": dec_num_heads,
            "mlp_ratio": mlp_ratio, "norm_im2_in_dec": norm_im2_in_dec, "pos_embed": pos_embed, "decoder": decoder,
        }  # fmt: skip
        self.decoder_type = decoder

        self.patch_embed = PatchEmbed(img_size, patch_size, 3, enc_embed_dim)
        self.mask_generator = RandomMask(mask_ratio)

        # Positions: fixed sin-cos buffers (v1) or rotary embeddings inside every attention (v2).
        self.pos_embed = pos_embed
        if pos_embed == "cosine":
            grid = self.patch_embed.grid_size
            self.register_buffer("enc_pos_embed", sincos_pos_embed_2d(enc_embed_dim, grid), persistent=True)
            self.register_buffer("dec_pos_embed", sincos_pos_embed_2d(dec_embed_dim, grid), persistent=True)
            self.rope = None
        else:
            self.enc_pos_embed = None
            self.dec_pos_embed = None
            self.rope = RoPE2D(base=rope_base_from_name(pos_embed))
        # Run-time setting, not a constructor argument: it changes no weights, so croco_kwargs and exports ignore it.
        self.pos_resize = "bicubic"
        self._pos_cache: dict[tuple[str, tuple[int, int], str], _CachedPos] = {}  # (buffer name, grid, mode)

        self.enc_blocks = nn.ModuleList(
            Block(enc_embed_dim, enc_num_heads, mlp_ratio, norm_layer, self.rope) for _ in range(enc_depth)
        )
        self.enc_norm = norm_layer(enc_embed_dim)

        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim, bias=True)
        if decoder == "cross":
            self.dec_blocks = nn.ModuleList(
                DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_layer, self.rope, norm_im2_in_dec)
                for _ in range(dec_depth)
            )
        else:
            if decoder == "cat":
                self.dec_view_embed = nn.Parameter(torch.zeros(2, dec_embed_dim))  # tells the two views apart
            self.dec_blocks = nn.ModuleList(
                Block(dec_embed_dim, dec_num_heads, mlp_ratio, norm_layer, self.rope) for _ in range(dec_depth)
            )
        self.dec_norm = norm_layer(dec_embed_dim)
        self.prediction_head = nn.Linear(dec_embed_dim, patch_size**2 * 3, bias=True)

        self.initialize_weights()
        if attn_backend is not None:
            self.attn_backend = attn_backend
        self.channels_last = channels_last

    # ------------------------------------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """Official order: patch-embed conv as a 2-D xavier matrix, mask token N(0, .02), then every Linear
        xavier-uniform with zero bias and every LayerNorm (1, 0). The conv bias keeps PyTorch's default."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        if self.decoder_type == "cat":
            nn.init.normal_(self.dec_view_embed, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ settings
    @property
    def attn_backend(self) -> str:
        """The attention backend of every block (``croco.models.blocks.ATTN_BACKENDS``); "mixed" if they differ."""
        names = {m.attn_backend for m in self.modules() if isinstance(m, Attention | CrossAttention)}
        return names.pop() if len(names) == 1 else "mixed"

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        name = check_attn_backend(name)
        for m in self.modules():
            if isinstance(m, Attention | CrossAttention):
                m.attn_backend = name

    @property
    def channels_last(self) -> bool:
        """Run the patch-embedding convolution in channels-last layout (its output then needs no transpose)."""
        return self.patch_embed.channels_last

    @channels_last.setter
    def channels_last(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"channels_last={enabled!r}: expected true or false")
        self.patch_embed.channels_last = enabled

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h*w, p*p*C); inside a patch: pixel row, pixel column, channel (fastest)."""
        B, C, H, W = imgs.shape
        p = self.patch_size
        h, w = self.patch_embed.grid(H, W)
        x = imgs.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, h * w, p * p * C)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None, channels: int = 3) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p). ``grid`` defaults to a square grid."""
        B, N, _ = x.shape
        p = self.patch_size
        if grid is None:
            side = round(N**0.5)
            if side * side != N:
                raise ValueError(f"unpatchify: {N} tokens are not a square grid; pass grid=(h, w)")
            grid = (side, side)
        h, w = grid
        x = x.reshape(B, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, channels, h * p, w * p)

    @property
    def pos_resize(self) -> PosResize:
        """How the cosine buffers meet a token grid other than the construction one.

        ``"bicubic"`` (default): resample the stored buffers as the official ``interpolate_pos_embed``
        (naver/croco ``models/pos_embed.py``) does, so a model holding checkpoint buffers keeps the positions it
        was trained with. ``"analytic"``: recompute the sin-cos grid at the new size (positions 0..h-1, 0..w-1).
        At the construction size both give the buffer itself. Used by ``forward`` and the feature methods alike;
        ignored with RoPE."""
        return self._pos_resize

    @pos_resize.setter
    def pos_resize(self, mode: PosResize) -> None:
        if mode not in POS_RESIZE_MODES:
            raise ValueError(f"pos_resize={mode!r}: expected one of {', '.join(POS_RESIZE_MODES)}")
        self._pos_resize = mode

    def cosine_pos_embed(self, name: CosineBuffer, grid: tuple[int, int]) -> torch.Tensor:
        """The (h*w, D) cosine embedding ``name`` for a (h, w) token grid, adapted as ``pos_resize`` says.

        Cached per grid and mode, and recomputed whenever the buffer changes (``load_state_dict``, ``.to()``, a
        reassigned buffer), so new buffers take effect at every size."""
        buffer = getattr(self, name)
        if buffer is None:
            raise ValueError(f"{name}: this model has no cosine buffers (pos_embed={self.pos_embed!r})")
        grid = (int(grid[0]), int(grid[1]))
        built = self.patch_embed.grid_size
        if grid == built:
            return buffer
        # Inference tensors have no version counter and a trainable buffer needs its graph: no caching then.
        cacheable = not (buffer.is_inference() or buffer.requires_grad)
        key = (name, grid, self.pos_resize)
        cached = self._pos_cache.get(key)
        if cacheable and cached is not None and cached.matches(buffer):
            return cached.value
        if self.pos_resize == "bicubic":
            out = resample_pos_embed(buffer, grid, src_grid=built)
        else:
            out = sincos_pos_embed_2d(buffer.shape[1], grid).to(buffer)
        if cacheable:
            self._pos_cache[key] = _CachedPos(buffer, buffer._version, buffer.data_ptr(), out)
        return out

    # ------------------------------------------------------------------------------------------ encoder
    def _encode_image(
        self, image: torch.Tensor, visible: torch.Tensor | None = None, return_all_blocks: bool = False
    ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Encode one image; with ``visible`` (B, N_visible) token indices only those go through the blocks.

        Returns the features (the list of all block outputs, the last one normalised, if asked) and the
        positions (B, N, 2) of all tokens."""
        x, pos = self.patch_embed(image)
        if self.enc_pos_embed is not None:
            x = x + self.cosine_pos_embed("enc_pos_embed", self.patch_embed.grid(*image.shape[-2:]))
        posvis = pos
        if visible is not None:
            x = x.gather(1, visible[..., None].expand(-1, -1, x.shape[-1]))
            posvis = pos.gather(1, visible[..., None].expand(-1, -1, 2))
        outputs = []
        for block in self.enc_blocks:
            x = block(x, posvis)
            outputs.append(x)
        outputs[-1] = self.enc_norm(outputs[-1])
        return (outputs if return_all_blocks else outputs[-1]), pos

    def _check_mask(self, mask: torch.Tensor, batch: int, num_patches: int) -> int:
        """Check a caller's mask and return its number of visible patches per row (one host read: the only
        one of a pass, and only for masks the network did not draw itself)."""
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, num_patches):
            raise ValueError(
                f"mask: expected a bool tensor of shape ({batch}, {num_patches}), got {mask.dtype} {tuple(mask.shape)}"
            )
        counts = mask.sum(dim=1).tolist()
        if any(c != counts[0] for c in counts):
            raise ValueError("mask: every sample must mask the same number of patches")
        return num_patches - (counts[0] if counts else 0)

    # ------------------------------------------------------------------------------------------ decoder
    def _decoder(
        self,
        feat1: torch.Tensor,
        pos1: torch.Tensor,
        visible1: torch.Tensor | None,
        feat2: torch.Tensor,
        pos2: torch.Tensor,
        grids: tuple[tuple[int, int], tuple[int, int]],
        return_all_blocks: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        x1 = self.decoder_embed(feat1)
        if visible1 is not None:  # put the visible tokens back among mask tokens, at their positions
            B, N, C = x1.shape[0], pos1.shape[1], x1.shape[-1]
            full = self.mask_token.to(x1.dtype).expand(B, N, C)
            x1 = full.scatter(1, visible1[..., None].expand(-1, -1, C), x1)
        if self.dec_pos_embed is not None:
            x1 = x1 + self.cosine_pos_embed("dec_pos_embed", grids[0])

        outputs = []
        if self.decoder_type == "mae":  # image 1 alone
            for block in self.dec_blocks:
                x1 = block(x1, pos1)
                outputs.append(x1)
            outputs[-1] = self.dec_norm(outputs[-1])
            return outputs if return_all_blocks else outputs[-1]
        x2 = self.decoder_embed(feat2)
        if self.dec_pos_embed is not None:
            x2 = x2 + self.cosine_pos_embed("dec_pos_embed", grids[1])
        if self.decoder_type == "cross":
            for block in self.dec_blocks:
                x1, x2 = block(x1, x2, pos1, pos2)
                outputs.append(x1)
        else:  # CatBlock: one sequence [image 1 | image 2], predictions from the image-1 part
            n1 = x1.shape[1]
            view = self.dec_view_embed.to(x1.dtype)
            x = torch.cat([x1 + view[0], x2 + view[1]], dim=1)
            pos = torch.cat([pos1, pos2], dim=1)
            for block in self.dec_blocks:
                x = block(x, pos)
                outputs.append(x[:, :n1])
        outputs[-1] = self.dec_norm(outputs[-1])
        return outputs if return_all_blocks else outputs[-1]

    # ------------------------------------------------------------------------------------------ forwards
    def forward(
        self,
        img1: torch.Tensor,
        img2: torch.Tensor,
        mask: torch.Tensor | None = None,
        check_mask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pretraining pass. img1 (masked, to reconstruct) and img2 (reference): (B, 3, H, W), normalised.

        Returns ``pred`` (B, N, p*p*3), ``mask`` (B, N) bool with True = masked, and ``target`` = patchify(img1).
        Without ``mask``, ``int(mask_ratio * N)`` patches per sample are drawn on img1's device. A given ``mask``
        is checked (type, shape, the same count in every row: one host read) and used as is; with
        ``check_mask=False`` the check is skipped, and the mask must have been drawn by ``mask_generator`` (or
        hold its count, ``int(mask_ratio * N)`` per row), which is how a training step stays free of host
        synchronisation and graph breaks."""
        B = img1.shape[0]
        grid1 = self.patch_embed.grid(*img1.shape[-2:])
        grid2 = self.patch_embed.grid(*img2.shape[-2:])
        n1 = grid1[0] * grid1[1]
        if mask is None or not check_mask:
            mask = self.mask_generator(B, n1, img1.device) if mask is None else mask.to(img1.device)
            num_visible = n1 - num_masked(n1, self.mask_generator.mask_ratio)
        else:
            mask = mask.to(img1.device)
            num_visible = self._check_mask(mask, B, n1)
        visible = visible_indices(mask, num_visible)
        feat1, pos1 = self._encode_image(img1, visible)
        if self.decoder_type == "mae":  # the single-view baseline never looks at image 2
            feat2, pos2 = feat1, pos1
        else:
            feat2, pos2 = self._encode_image(img2)
        dec = self._decoder(feat1, pos1, visible, feat2, pos2, (grid1, grid2))
        return self.prediction_head(dec), mask, self.patchify(img1)

    def encoder_features(self, img: torch.Tensor, return_all_blocks: bool = True) -> list[torch.Tensor] | torch.Tensor:
        """Monocular features: the unmasked encoder on one image of any size (all block outputs, last normed)."""
        return self._encode_image(img, return_all_blocks=return_all_blocks)[0]

    def binocular_features(
        self, img1: torch.Tensor, img2: torch.Tensor, return_all_blocks: bool = True, return_image2: bool = False
    ) -> Any:
        """Binocular features without masking: [image-1 encoder blocks] + [decoder blocks] (the last of each
        normalised), as the official downstream models build them. Same-size images share one encoder pass.
        ``return_image2``: return ``(features, image-2 encoder output (B, N2, enc_embed_dim))`` instead."""
        grids = (self.patch_embed.grid(*img1.shape[-2:]), self.patch_embed.grid(*img2.shape[-2:]))
        if img1.shape == img2.shape:
            both, pos = self._encode_image(torch.cat([img1, img2]), return_all_blocks=return_all_blocks)
            pos1, pos2 = pos.chunk(2)
            if return_all_blocks:
                enc1 = [f.chunk(2)[0] for f in both]
                feat1, feat2 = enc1[-1], both[-1].chunk(2)[1]
            else:
                feat1, feat2 = both.chunk(2)
        else:
            enc1, pos1 = self._encode_image(img1, return_all_blocks=return_all_blocks)
            feat2, pos2 = self._encode_image(img2)
            feat1 = enc1[-1] if return_all_blocks else enc1
        dec = self._decoder(feat1, pos1, None, feat2, pos2, grids, return_all_blocks=return_all_blocks)
        features = enc1 + dec if return_all_blocks else dec
        return (features, feat2) if return_image2 else features
