"""Tube masking (VideoMAE, reference section 3): one spatial mask shared by every time slice.

Each sample removes exactly ``int(mask_ratio * h * w)`` spatial positions (VideoMAE's
``TubeMaskingGenerator`` rounding: 176 of 196 at 0.9) in all ``t`` time slices. Space-time random masking
(MAE-ST) is the core's built-in ``random``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tube_masking"]


def tube_masking(
    *,
    batch: int,
    grid: tuple[int, ...],
    mask_ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """noise (N, t*h*w) that is the same for every time slice, and len_keep = t * (h*w - int(ratio*h*w))."""
    if len(grid) != 3:
        raise ValueError(f"tube masking needs a (t, h, w) token grid, got {grid}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    t, h, w = grid
    removed_per_slice = int(mask_ratio * h * w)
    if removed_per_slice >= h * w:
        raise ValueError(f"mask_ratio {mask_ratio} removes all {h * w} positions of a time slice")
    # Distinct ranks instead of raw uniform noise: no two spatial positions can tie, so the stable sort
    # always keeps whole tubes.
    spatial = torch.rand(batch, h * w, generator=generator).argsort(dim=1).argsort(dim=1).float()  # (N, h*w)
    noise = spatial.repeat(1, t).to(device)  # (N, t*h*w): slice k repeats the same spatial noise
    return noise, t * (h * w - removed_per_slice)
