"""Random patch masking: exactly ``int(ratio * N)`` masked patches in every sample (official rule)."""

from __future__ import annotations

import torch

__all__ = ["RandomMask", "check_mask_ratio", "num_masked", "visible_indices"]


def num_masked(num_patches: int, ratio: float) -> int:
    return int(ratio * num_patches)


def check_mask_ratio(ratio: object, name: str = "mask_ratio") -> float:
    """The one check of a mask ratio: a number strictly between 0 and 1 (one-line ``ValueError`` naming ``name``)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"{name}={ratio!r}: expected a number strictly between 0 and 1 (e.g. 0.9)")
    return float(ratio)


class RandomMask:
    """Boolean masks (B, N), True = masked. A random permutation per sample puts the masked patches uniformly.

    Every row has the same count, so the visible tokens can be gathered into a dense (B, N_visible, C) tensor.
    """

    def __init__(self, mask_ratio: float):
        self.mask_ratio = check_mask_ratio(mask_ratio)

    def __call__(
        self,
        batch: int,
        num_patches: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw masks on ``device`` (default: the generator's, else the CPU) without any host synchronisation.

        With a ``generator`` the masks are reproducible; one on ``device`` draws there directly (no copy), one
        on another device (e.g. a CPU generator for a CUDA mask) draws there and copies, which gives the same
        masks on every device."""
        draw_on = generator.device if generator is not None else device
        noise = torch.rand(batch, num_patches, generator=generator, device=draw_on)
        mask = noise.argsort(dim=1) < num_masked(num_patches, self.mask_ratio)
        return mask.to(device) if device is not None else mask

    def __repr__(self) -> str:
        return f"RandomMask(mask_ratio={self.mask_ratio})"


def visible_indices(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """(B, num_visible) indices of the unmasked patches of a (B, N) mask, ascending in every row.

    ``num_visible`` must be every row's count of False entries (the caller knows it: no data-dependent shape,
    no host synchronisation). A stable sort of the 0/1 mask puts the visible positions first in their original
    order, so gathering with these indices gives exactly ``x[~mask].view(B, num_visible, C)``."""
    return mask.to(torch.uint8).argsort(dim=1, stable=True)[:, :num_visible]
