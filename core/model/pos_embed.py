"""Fixed sine-cosine position tables (MAE, reference section 1).

The official tables are built in float64 and stored as float32; the 2-D table puts the patch's
*column* index in the first half of the channels and its *row* index in the second half.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sincos_1d", "sincos_2d", "with_cls_slot"]


def sincos_1d(positions: Tensor, width: int) -> Tensor:
    """positions: (M,) -> (M, width) as [sin(pos * w_i)] + [cos(pos * w_i)], w_i = 10000^(-i / (width/2))."""
    if width % 2:
        raise ValueError(f"a 1-D sin-cos table needs an even width, got {width}")
    omega = torch.arange(width // 2, dtype=torch.float64) / (width / 2.0)
    omega = 1.0 / 10000.0**omega  # (width/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, width/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid: tuple[int, int], width: int) -> Tensor:
    """grid (H, W) of patches -> (H*W, width), patches numbered row-major (index = y*W + x)."""
    if width % 4:
        raise ValueError(f"a 2-D sin-cos table needs a width divisible by 4, got {width}")
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (H, W) each
    # Column first, row second: this is the layout of the released tables (decoder_pred depends on it).
    return torch.cat([sincos_1d(xs.flatten(), width // 2), sincos_1d(ys.flatten(), width // 2)], dim=1)


def with_cls_slot(table: Tensor) -> Tensor:
    """(L, D) -> (1, 1 + L, D): the CLS slot has an all-zero position vector, as in the official tables."""
    return torch.cat([table.new_zeros(1, table.shape[1]), table], dim=0)[None]
