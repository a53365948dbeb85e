"""Tube masking (VideoMAE, reference section 3): one spatial mask shared by every time slice.

Each sample removes exactly ``int(mask_ratio * h * w)`` spatial positions (VideoMAE's
``TubeMaskingGenerator`` rounding: 176 of 196 at 0.9) in all ``t`` time slices. Space-time random masking
(MAE-ST) is the core's built-in ``random``.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor

from anymae.core.model.masking import MaskingArgs

__all__ = ["tube_masking"]


def tube_masking(**args: Unpack[MaskingArgs]) -> tuple[Tensor, int]:
    """noise (N, t*h*w) that is the same for every time slice, and len_keep = t * (h*w - int(ratio*h*w))."""
    grid, mask_ratio = args["grid"], args["mask_ratio"]
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
    spatial = torch.rand(args["batch"], h * w, generator=args.get("generator"))  # (N, h*w)
    spatial = spatial.argsort(dim=1).argsort(dim=1).float()  # distinct ranks 0..h*w-1
    noise = spatial.repeat(1, t).to(args["device"])  # (N, t*h*w): slice k repeats the same spatial noise
    return noise, t * (h * w - removed_per_slice)
