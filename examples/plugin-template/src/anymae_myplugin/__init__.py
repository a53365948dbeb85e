"""anymae-myplugin: a template plugin registering the masking strategy ``block`` (``model.masking: block``).

Block masking removes one contiguous span (1-D grids) or rectangle (2-D grids) of tokens instead of
scattered ones, the structured masking of BEiT and of MAE's video/audio follow-ups in its simplest form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from anymae.core.model.masking import keep_count
from anymae.plugins import hookimpl

__all__ = ["anymae_register_masking", "block_masking"]


def block_masking(
    *,
    batch: int,
    grid: tuple[int, ...],
    mask_ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """One random block per sample covering about ``mask_ratio`` of the grid along every axis.

    Tokens inside the block get noise in [1, 2), the others in [0, 1): the core keeps the ``len_keep``
    smallest, so the block goes first and the exact removed count ``L - len_keep`` is topped up (or
    trimmed) at random. On a 1-D grid the block is exactly the removed span.
    """
    num_tokens = math.prod(grid)
    len_keep = keep_count(num_tokens, mask_ratio)
    side = mask_ratio ** (1 / len(grid))  # per-axis fraction, so the block's volume is about mask_ratio
    inside = torch.ones(batch, *grid, dtype=torch.bool)  # (N, *grid)
    for axis, size in enumerate(grid):
        extent = min(size, max(1, round(size * side)))
        start = torch.randint(0, size - extent + 1, (batch, 1), generator=generator)  # (N, 1)
        along = (torch.arange(size) >= start) & (torch.arange(size) < start + extent)  # (N, size)
        shape = [batch] + [1] * len(grid)
        shape[axis + 1] = size
        inside &= along.view(shape)
    noise = torch.rand(batch, num_tokens, generator=generator) + inside.flatten(1).float()  # (N, L)
    return noise.to(device), len_keep


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("block", block_masking)
