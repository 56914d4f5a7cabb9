"""The CroCo pretraining loss."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedMSE", "normalize_patches", "patch_stats"]


def patch_stats(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each (B, N, P) patch over all its P values (channels pooled; unbiased variance + eps)."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps) ** 0.5


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of (B, N, P) targets, the official ``norm_pix_loss``."""
    mean, std = patch_stats(patches, eps)
    return (patches - mean) / std


class MaskedMSE(nn.Module):
    """Mean squared error on the masked patches (mean over all masked patches of the batch).

    With ``norm_pix_loss`` the target patches are normalised first (pretraining default). Targets are
    computed from the ImageNet-normalised images, as in the official code.
    """

    def __init__(self, norm_pix_loss: bool = True, masked: bool = True):
        super().__init__()
        self.norm_pix_loss = norm_pix_loss
        self.masked = masked

    def forward(self, pred: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.norm_pix_loss:
            target = normalize_patches(target)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        if not self.masked:
            return per_patch.mean()
        mask = mask.to(per_patch.dtype)
        return (per_patch * mask).sum() / mask.sum()

    def extra_repr(self) -> str:
        return f"norm_pix_loss={self.norm_pix_loss}, masked={self.masked}"
