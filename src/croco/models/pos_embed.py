"""Positional information: 2-D sin-cos embeddings (CroCo v1) and 2-D rotary embeddings (CroCo v2).

Both follow the official layouts exactly, so released checkpoints give the official outputs:

* sin-cos: the first half of each vector encodes the column (x), the second half the row (y); inside a half the
  sin block comes before the cos block (MAE convention). Tokens are row-major.
* RoPE2D: the first half of each head's channels is rotated with the row (y), the second half with the column (x);
  inside a half, channel j pairs with channel j + m/2 ("rotate half", not interleaved).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RoPE2D", "interpolate_pos_embed", "resample_pos_embed", "rope_base_from_name", "sincos_pos_embed_2d"]


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) as [sin(pos*w_k), cos(pos*w_k)], w_k = 10000^(-k/(dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (h*w, dim) in float32 for a (h, w) token grid, official layout."""
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w)  # token t = r*w + c
    cols = torch.arange(w).repeat(h)
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1).float()


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], src_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bicubically resample a (h0*w0, D) position embedding to a (h, w) token grid.

    As the official ``interpolate_pos_embed`` (naver/croco ``models/pos_embed.py``) and timm's
    ``resample_abs_pos_embed``: reshape to (1, D, h0, w0), ``F.interpolate(mode="bicubic", align_corners=False)``,
    flatten back row-major. Positions keep the source range 0..h0-1 x 0..w0-1; they are not recomputed.
    ``src_grid`` defaults to a square grid, which is what the official code assumes of a checkpoint. The
    embedding itself is returned when the grids agree."""
    n, dim = pos_embed.shape
    if src_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot resample a position embedding of {n} tokens: the source grid must be square")
        src_grid = (side, side)
    src_grid, grid = tuple(src_grid), tuple(grid)
    if src_grid[0] * src_grid[1] != n:
        raise ValueError(f"a position embedding of {n} tokens does not fit the source grid {src_grid}")
    if src_grid == grid:
        return pos_embed
    # float32 math: bicubic interpolation is not implemented for every low-precision dtype/device
    x = pos_embed.float().reshape(1, *src_grid, dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], dim).to(pos_embed.dtype)


def interpolate_pos_embed(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample the cosine buffers of ``state_dict`` (in place, and returned) to ``model``'s grid."""
    for key in ("enc_pos_embed", "dec_pos_embed"):
        target = getattr(model, key, None)
        if key in state_dict and isinstance(target, torch.Tensor) and state_dict[key].shape != target.shape:
            state_dict[key] = resample_pos_embed(state_dict[key], model.patch_embed.grid_size)
    return state_dict


def rope_base_from_name(pos_embed: str) -> float:
    """'RoPE100' -> 100.0. Raises a one-line error for anything that is not 'RoPE<number>'."""
    if pos_embed.startswith("RoPE"):
        try:
            return float(pos_embed[len("RoPE") :])
        except ValueError:
            pass
    raise ValueError(f"pos_embed={pos_embed!r}: expected 'cosine' or 'RoPE<base>' such as 'RoPE100'")


class RoPE2D(nn.Module):
    """2-D rotary position embedding applied to q or k of shape (B, heads, N, Dh), positions (B, N, 2) = (y, x).

    Pure PyTorch and stateless (no parameters or buffers, so it adds nothing to the state dict). Angles are
    ``position * inv_freq`` in float32 (the values of the official cos/sin tables) and cast to the token dtype,
    as the official CUDA kernel computes internally. They are computed from the positions directly rather than
    looked up in a table sized by ``positions.max()``, which would synchronise a GPU in every attention layer.
    """

    def __init__(self, base: float = 100.0, f0: float = 1.0):
        super().__init__()
        self.base = base
        self.f0 = f0

    def cos_sin(self, positions: torch.Tensor, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every channel's angle for (B, N, 2) positions and head width ``dim``: (B, 1, N, dim),
        the row (y) half first. Computed once per attention for q and k, in one vectorised expression that
        ``torch.compile`` fuses with the rotation."""
        if dim % 4 != 0:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {dim}")
        half = dim // 2  # channels per axis
        inv_freq = self.f0 / self.base ** (torch.arange(0, half, 2, device=positions.device).float() / half)
        angles = positions.float()[..., None] * inv_freq  # (B, N, 2, half/2)
        angles = torch.cat([angles, angles], dim=-1).flatten(-2)[:, None]  # channel j and j + half/2 share an angle
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(tokens: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate (B, heads, N, Dh) tokens by the angles of ``cos_sin``: inside each axis half, channel j pairs
        with channel j + Dh/4 (rotate half), the same elementwise products as the official per-axis code."""
        cos, sin = cos_sin
        quarter = tokens.shape[-1] // 4
        parts = tokens.unflatten(-1, (2, 2, quarter))  # (axis, half of the axis, channel)
        rotated = torch.stack([-parts[..., 1, :], parts[..., 0, :]], dim=-2).flatten(-3)
        return tokens * cos + rotated * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.rotate(tokens, self.cos_sin(positions, tokens.shape[-1], tokens.dtype))

    def extra_repr(self) -> str:
        return f"base={self.base}, f0={self.f0}"
