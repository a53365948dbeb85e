"""Dense features of a ViT encoder: the patch tokens after chosen blocks, laid out as 2-D maps.

Dense heads (a linear probe per pixel, UperNet) read the encoder this way, as BEiT's segmentation backbone does
(``beit/semantic_segmentation/backbone/beit.py``, which the MAE paper's ADE20K transfer used, appendix A.4): all
tokens (no masking), the CLS token dropped, each chosen block's output taken before the final norm. The position
table is resampled (timm's ``resample_abs_pos_embed``: bicubic, antialiased) when the input's token grid is not
the one the encoder was built for, so a model pre-trained at 224 px reads 512 px crops or whole images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from anymae.core.model.encoder import MaskedEncoder

__all__ = ["block_features", "evenly_spaced_blocks", "positions_for_grid"]

# BEiT's out_indices are the blocks ending 1/3, 1/2, 2/3 and all of the depth: [3, 5, 7, 11] for ViT-B (12 blocks),
# [7, 11, 15, 23] for ViT-L (24 blocks), in upernet_beit_{base_12,large_24}_*_ade20k configs.
BLOCK_FRACTIONS = ((1, 3), (1, 2), (2, 3), (1, 1))


def evenly_spaced_blocks(depth: int) -> list[int]:
    """The 4 blocks (counting from 0) whose outputs feed a 4-level dense head: BEiT's [3, 5, 7, 11] for depth 12,
    [7, 11, 15, 23] for 24, and for any depth >= 4 the blocks ending ceil(depth * f) for f = 1/3, 1/2, 2/3, 1
    (made strictly increasing where small depths round two of them onto one block)."""
    if depth < len(BLOCK_FRACTIONS):
        raise ValueError(f"a 4-level dense head needs at least 4 blocks, the encoder has {depth}")
    blocks = [-(-depth * num // den) - 1 for num, den in BLOCK_FRACTIONS]  # ceil(depth * num / den) - 1
    for i in range(len(blocks) - 2, -1, -1):
        blocks[i] = min(blocks[i], blocks[i + 1] - 1)
    return blocks


def positions_for_grid(encoder: MaskedEncoder, grid: tuple[int, int], pos_grid: tuple[int, int]) -> Tensor:
    """The encoder's position table (1, num_prefix + L0, D), built for ``pos_grid``, for tokens on ``grid``:
    (1, num_prefix + H'*W', D); the prefix (CLS) row is kept as it is."""
    table = encoder.pos_embed
    if table.shape[1] != encoder.num_prefix + math.prod(pos_grid):
        raise ValueError(
            f"the encoder's position table has {table.shape[1] - encoder.num_prefix} patch positions, "
            f"not the {pos_grid[0]}x{pos_grid[1]} of pos_grid"
        )
    if tuple(grid) == tuple(pos_grid):
        return table
    return resample_abs_pos_embed(
        table, new_size=list(grid), old_size=list(pos_grid), num_prefix_tokens=encoder.num_prefix
    )


def block_features(
    encoder: MaskedEncoder,
    x: Tensor,
    layers: Sequence[int],
    *,
    grid: tuple[int, int],
    pos_grid: tuple[int, int] | None = None,
) -> list[Tensor]:
    """x: tokens (N, L, D) without positions (a tokenizer's output), row-major over ``grid`` (H', W') ->
    one map (N, D, H', W') per entry of ``layers`` (block indices from 0), the block's output before the final norm.

    ``pos_grid``: the token grid the encoder's position table was made for (the pre-training tokenizer's
    ``grid``); default ``grid``. When they differ the table is resampled to ``grid``.
    """
    h, w = grid
    n, length, dim = x.shape
    if length != h * w:
        raise ValueError(f"{length} tokens do not fill the {h}x{w} grid ({h * w} tokens)")
    depth = len(encoder.blocks)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} must be block indices 0..{depth - 1} (at least one)")
    prefix = encoder.num_prefix
    pos = positions_for_grid(encoder, grid, pos_grid or grid)  # (1, prefix + L, D)
    x = x + pos[:, prefix:]
    if encoder.cls_token is not None:
        cls = (encoder.cls_token + pos[:, :1]).expand(n, -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L, D)
    wanted = set(layers)
    taken: dict[int, Tensor] = {}
    for i, block in enumerate(encoder.blocks[: max(layers) + 1]):
        x = block(x)
        if i in wanted:
            taken[i] = x[:, prefix:].transpose(1, 2).reshape(n, dim, h, w)  # (N, L, D) -> (N, D, H', W')
    return [taken[i] for i in layers]
