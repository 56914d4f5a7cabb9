"""Random patch masking: exactly ``int(ratio * N)`` masked patches in every sample (official rule)."""

from __future__ import annotations

import torch

__all__ = ["RandomMask", "num_masked"]


def num_masked(num_patches: int, ratio: float) -> int:
    return int(ratio * num_patches)


class RandomMask:
    """Boolean masks (B, N), True = masked. A random permutation per sample puts the masked patches uniformly.

    Every row has the same count, so the visible tokens can be gathered into a dense (B, N_visible, C) tensor.
    """

    def __init__(self, mask_ratio: float):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: expected a value in [0, 1)")
        self.mask_ratio = mask_ratio

    def __call__(
        self,
        batch: int,
        num_patches: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw masks on ``device``; with a (CPU) ``generator`` they are reproducible on any device."""
        noise = torch.rand(batch, num_patches, generator=generator)
        mask = noise.argsort(dim=1) < num_masked(num_patches, self.mask_ratio)
        return mask.to(device) if device is not None else mask

    def __repr__(self) -> str:
        return f"RandomMask(mask_ratio={self.mask_ratio})"
