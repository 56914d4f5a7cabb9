"""Transformer building blocks with the official CroCo module names (so released state dicts load strictly).

Attention has several interchangeable backends (``ATTN_BACKENDS``), all computing softmax(q k^T / sqrt(Dh)) v:

* ``manual``: the explicit softmax of the official code (naver/croco ``models/blocks.py``);
* ``sdpa``: ``F.scaled_dot_product_attention``, PyTorch picks the kernel;
* ``sdpa_math`` / ``sdpa_efficient`` / ``sdpa_flash``: the same call restricted to one kernel with
  ``torch.nn.attention.sdpa_kernel`` (efficient and flash need a device that has them);
* ``auto``: the backend measured fastest for the device and dtype of the tokens (``AUTO_ATTN_BACKEND``; the
  table is re-measured with ``python -m croco.bench.model --attention-table``).

All give the same result to float rounding (tests/models/test_blocks.py). The default of a new module comes
from ``CROCO_FUSED_ATTN`` (1: ``sdpa``, 0: ``manual``), else ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from croco.models.pos_embed import RoPE2D
from croco.utils.sizes import as_hw

__all__ = [
    "ATTN_BACKENDS",
    "AUTO_ATTN_BACKEND",
    "Attention",
    "Block",
    "CrossAttention",
    "DecoderBlock",
    "PatchEmbed",
    "check_attn_backend",
    "default_attn_backend",
    "resolve_attn_backend",
    "use_fused_attn",
]

NormLayer = Callable[[int], nn.Module]

_SDPA_KERNELS = {
    "sdpa_math": SDPBackend.MATH,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
}
ATTN_BACKENDS = ("auto", "manual", "sdpa", *_SDPA_KERNELS)

# What ``auto`` picks, by (device type, dtype of q): the fastest backend on the attention shapes of a CroCo v1
# training step (batch 8 at 224: 20 and 196 tokens), forward + backward, measured with
# ``python -m croco.bench.model --attention-table`` (docs/benchmarks.md, "Attention backends"). CPU: AMD EPYC
# (Zen 4, AVX512-BF16, no AMX), torch 2.14, 2 threads: in fp32 SDPA's default dispatch was fastest (about 2x
# the explicit softmax at 196 tokens); under bf16 autocast the explicit softmax was (SDPA's CPU kernels were
# 1.4-12x slower, worst at 20 tokens). CUDA: no GPU was available to measure; ``sdpa`` lets PyTorch dispatch
# to flash / memory-efficient attention, its choice on Ampere and later. Anything missing uses ``sdpa``.
AUTO_ATTN_BACKEND: dict[tuple[str, torch.dtype], str] = {
    ("cpu", torch.float32): "sdpa",
    ("cpu", torch.bfloat16): "manual",
    ("cuda", torch.float32): "sdpa",
    ("cuda", torch.bfloat16): "sdpa",
    ("cuda", torch.float16): "sdpa",
}


def check_attn_backend(name: object, where: str = "attn_backend") -> str:
    if name not in ATTN_BACKENDS:
        raise ValueError(f"{where}={name!r}: expected one of {', '.join(ATTN_BACKENDS)}")
    return str(name)


def default_attn_backend() -> str:
    """``CROCO_FUSED_ATTN=1``: sdpa, ``=0``: the explicit softmax, unset: ``auto``."""
    flag = os.environ.get("CROCO_FUSED_ATTN")
    return "auto" if flag is None else ("manual" if flag == "0" else "sdpa")


def use_fused_attn() -> bool:
    return default_attn_backend() != "manual"


def resolve_attn_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend of ``backend`` for tokens on ``device`` in ``dtype`` (``auto`` looked up)."""
    if backend != "auto":
        return backend
    return AUTO_ATTN_BACKEND.get((device.type, dtype), "sdpa")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v for (B, heads, N, Dh) tensors, with ``backend`` (see the module doc)."""
    backend = resolve_attn_backend(backend, q.device, q.dtype)
    if backend == "manual":
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return attn.softmax(dim=-1) @ v
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(_SDPA_KERNELS[backend]):
        return F.scaled_dot_product_attention(q, k, v)


class _AttentionBackend(nn.Module):
    """What both attention modules share: the backend setting (``fused_attn`` is its boolean view)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_backend = default_attn_backend()

    @property
    def attn_backend(self) -> str:
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        self._attn_backend = check_attn_backend(name)

    @property
    def fused_attn(self) -> bool:
        """True unless the explicit softmax is selected; setting it picks ``sdpa`` or ``manual``."""
        return self._attn_backend != "manual"

    @fused_attn.setter
    def fused_attn(self, fused: bool) -> None:
        self._attn_backend = "sdpa" if fused else "manual"


class Attention(_AttentionBackend):
    """Multi-head self-attention with one fused ``qkv`` projection and optional RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            cos_sin = self.rope.cos_sin(pos, q.shape[-1], q.dtype)  # once for q and k
            q, k = self.rope.rotate(q, cos_sin), self.rope.rotate(k, cos_sin)
        x = _attend(q, k, v, self.attn_backend)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(_AttentionBackend):
    """Queries from image-1 tokens, keys and values from the image-2 memory (separate projections)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=True)
        self.projk = nn.Linear(dim, dim, bias=True)
        self.projv = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        qpos: torch.Tensor | None = None,
        kpos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, N, C = query.shape
        q, k, v = self._heads(self.projq(query)), self._heads(self.projk(memory)), self._heads(self.projv(memory))
        if self.rope is not None:
            q, k = self.rope(q, qpos), self.rope(k, kpos)
        x = _attend(q, k, v, self.attn_backend)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm ViT block (encoder, and the CatBlock decoder): x += attn(norm1 x); x += mlp(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer: NormLayer, rope: RoPE2D | None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, rope=rope)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # timm's: fc1, GELU, fc2 (the official names)
        self.drop_path: nn.Module = nn.Identity()  # stochastic depth, set for fine-tuning (no parameters)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """The CroCo "CrossBlock": self-attention, cross-attention to the (fixed) image-2 memory, MLP.

    ``y`` is returned unchanged: every decoder block reads the same memory, each through its own ``norm_y``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        norm_layer: NormLayer,
        rope: RoPE2D | None,
        norm_mem: bool = True,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, rope=rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope=rope)
        self.norm2 = norm_layer(dim)
        self.norm3 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = norm_layer(dim) if norm_mem else nn.Identity()
        self.drop_path: nn.Module = nn.Identity()  # stochastic depth, set for fine-tuning (no parameters)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor | None, ypos: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.drop_path(self.attn(self.norm1(x), xpos))
        x = x + self.drop_path(self.cross_attn(self.norm2(x), self.norm_y(y), xpos, ypos))
        x = x + self.drop_path(self.mlp(self.norm3(x)))
        return x, y


class PatchEmbed(nn.Module):
    """Image (B, 3, H, W) -> tokens (B, N, D) and integer (row, col) positions (B, N, 2), row-major.

    ``img_size`` is the construction size (it sizes the cosine buffers and the mask count of a released
    model); any H, W divisible by the patch size is accepted at run time.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = as_hw(img_size)
        self.patch_size = (patch_size, patch_size)
        if any(s % patch_size for s in self.img_size):
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={patch_size}")
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.channels_last = False  # NHWC convolution: its (B, D, h, w) output is then (B, h*w, D) without a copy
        self._positions: dict[tuple, torch.Tensor] = {}

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size[0]
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {p}")
        return height // p, width // p

    def positions(self, batch: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (grid, device)
        if key not in self._positions:
            rows = torch.arange(grid[0], device=device).repeat_interleave(grid[1])
            cols = torch.arange(grid[1], device=device).repeat(grid[0])
            self._positions[key] = torch.stack([rows, cols], dim=-1)
        return self._positions[key].unsqueeze(0).expand(batch, -1, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.grid(x.shape[-2], x.shape[-1])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens, self.positions(x.shape[0], grid, x.device)
