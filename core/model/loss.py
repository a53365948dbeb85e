"""Reconstruction targets and the masked MSE loss (reference section 1)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["masked_mse", "normalize_patches", "patch_mean_baseline"]


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """(N, L, P) -> (normalized, mean (N, L, 1), std (N, L, 1)) with the *unbiased* variance, eps inside the root."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=True) + eps).sqrt()
    return (patches - mean) / std, mean, std


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """pred, target: (N, L, P), mask: (N, L) with 1 = removed -> mean over removed tokens of the per-token MSE."""
    per_token = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    return (per_token * mask).sum() / mask.sum()


def patch_mean_baseline(target: Tensor, mask: Tensor) -> Tensor:
    """The loss of the trivial predictor that outputs each patch's own mean value: a floor to beat."""
    return masked_mse(target.mean(dim=-1, keepdim=True).expand_as(target), target, mask)
