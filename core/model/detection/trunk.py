"""The plain ViT as a detection trunk: its tokenizer and encoder run on images of any size divisible by the patch.

Two readings of the encoder, one per backbone of :mod:`anymae.core.model.detection`:

- the MAE paper's (appendix A.3) reads the outputs of 4 blocks with the CLS token, as the segmentation features do
  (:func:`~anymae.core.model.features.block_features`);
- ViTDet's (Li, Mao, Girshick, He 2022; detectron2 ``modeling/backbone/vit.py``) drops the CLS token, adds the
  position table resampled to the token grid, and runs every block except a few global ones on non-overlapping
  windows of the grid (``window_partition``: the grid zero-padded to a multiple of the window after ``norm1``).

Windowed attention re-orders the tokens around each block's own ``norm1``, ``attn``, ``mlp`` and residuals
(timm's :class:`~timm.models.vision_transformer.Block`), so it adds no parameter and renames none: an MAE's encoder
weights load unchanged. ViTDet also adds relative position biases (zero-initialised, ``use_rel_pos=True``); the
MAE encoder has none and none are added here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import Tensor

from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.features import positions_for_grid
from anymae.core.model.tokenizer import TokenEmbedder

__all__ = ["quarter_blocks", "run_windowed", "tokens_any_size", "window_partition", "window_unpartition"]


def quarter_blocks(depth: int) -> list[int]:
    """The last block (from 0) of each of 4 equal subsets of ``depth`` blocks: [2, 5, 8, 11] for ViT-B (12).

    They are the paper's A.3 feature blocks ("the stack of blocks divided equally into 4 subsets") and ViTDet's
    global-attention blocks (2, 5, 8, 11 for ViT-B; 5, 11, 17, 23 for ViT-L in ``mask_rcnn_vitdet_{b,l}_100ep``).
    A depth not divisible by 4 ends subset k at block ceil(depth * k / 4) - 1."""
    if depth < 4:
        raise ValueError(f"4 subsets of blocks need a depth of at least 4, the encoder has {depth}")
    return [-(-depth * k // 4) - 1 for k in range(1, 5)]


def tokens_any_size(tokenizer: TokenEmbedder, images: Tensor, patch_size: int) -> tuple[Tensor, tuple[int, int]]:
    """images (N, C, H, W), H and W divisible by ``patch_size`` -> (tokens (N, L, D), grid (H/p, W/p)).

    The tokenizer takes only the size it was built for, an H0 x W0 grid of patches. A ViT patch embedding is a
    convolution of kernel = stride = p, so a token depends on its own patch alone: the image's L patches are laid,
    in order, into tiles of H0 x W0 patches (the last tile zero-filled), the tiles tokenized as a batch, and the
    tokens read back in order. Exact for every such tokenizer, at the cost of one tokenizer call per tile."""
    n, _, height, width = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image {height}x{width} is not divisible by patch {p}")
    grid = (height // p, width // p)
    if len(tokenizer.grid) != 2:
        raise ValueError(f"detection needs a 2-D token grid, the tokenizer's is {tuple(tokenizer.grid)}")
    h0, w0 = tokenizer.grid
    if grid == (h0, w0):
        return tokenizer(images), grid
    length, per_tile = math.prod(grid), h0 * w0
    tiles = -(-length // per_tile)
    patches = rearrange(images, "n c (h p) (w q) -> n (h w) c p q", p=p, q=p)  # (N, L, C, p, p)
    patches = F.pad(patches, (0, 0, 0, 0, 0, 0, 0, tiles * per_tile - length))  # zero patches fill the last tile
    tile_images = rearrange(patches, "n (t a b) c p q -> (n t) c (a p) (b q)", a=h0, b=w0)  # (N*T, C, H0*p, W0*p)
    tokens = tokenizer(tile_images)  # (N*T, H0*W0, D)
    return rearrange(tokens, "(n t) l d -> n (t l) d", n=n)[:, :length], grid  # (N, L, D)


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """x: (N, H', W', D) -> (windows (N * nW, window * window, D), padded grid (Hp, Wp)); the grid is zero-padded at
    the bottom and right to a multiple of ``window`` (detectron2 ``backbone/utils.py`` ``window_partition``)."""
    _, h, w, _ = x.shape
    pad_h, pad_w = -h % window, -w % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (N, Hp, Wp, D)
    windows = rearrange(x, "n (a s) (b t) d -> (n a b) (s t) d", s=window, t=window)
    return windows, (h + pad_h, w + pad_w)


def window_unpartition(windows: Tensor, window: int, padded: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """The inverse of :func:`window_partition`: (N * nW, window * window, D) -> (N, H', W', D), padding removed."""
    hp, wp = padded
    x = rearrange(windows, "(n a b) (s t) d -> n (a s) (b t) d", a=hp // window, b=wp // window, s=window)
    return x[:, : grid[0], : grid[1]]


def _windowed_block(block: Block, x: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """ViTDet's ``Block.forward`` with ``window_size > 0`` on a timm block's own layers: x (N, L, D) -> (N, L, D)."""
    n, _, dim = x.shape
    y = block.norm1(x).reshape(n, *grid, dim)  # (N, H', W', D)
    windows, padded = window_partition(y, window)
    y = window_unpartition(block.attn(windows), window, padded, grid).reshape(n, -1, dim)  # (N, L, D)
    x = x + block.drop_path1(block.ls1(y))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_windowed(
    encoder: MaskedEncoder,
    tokens: Tensor,
    *,
    grid: tuple[int, int],
    pos_grid: tuple[int, int],
    window: int,
    global_blocks: Sequence[int],
) -> Tensor:
    """tokens (N, L, D) on ``grid`` (no CLS, no positions) -> the last block's output (N, D, H', W'), before the
    encoder's final norm, as ViTDet's ``ViT.forward`` (its ``out_feature`` "last_feat").

    ``window`` 0 makes every block global; otherwise the blocks not in ``global_blocks`` attend within windows of
    ``window`` x ``window`` tokens (ViTDet: 14 at 1024 px, i.e. the 224 px pre-training grid)."""
    depth = len(encoder.blocks)
    bad = [i for i in global_blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(f"global_blocks {bad} are not block indices 0..{depth - 1}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0: global attention everywhere), got {window}")
    if window and not all(isinstance(block, Block) for block in encoder.blocks):
        kinds = sorted({type(block).__name__ for block in encoder.blocks})
        raise ValueError(f"windowed attention re-orders timm Block's layers; the encoder's blocks are {kinds}")
    n, length, dim = tokens.shape
    if length != grid[0] * grid[1]:
        raise ValueError(f"{length} tokens do not fill the {grid[0]}x{grid[1]} grid")
    pos = positions_for_grid(encoder, grid, pos_grid)  # (1, num_prefix + L, D)
    x = tokens + pos[:, encoder.num_prefix :]  # ViTDet's get_abs_pos: the CLS row is dropped with the token
    wanted_global = set(global_blocks)
    for i, block in enumerate(encoder.blocks):
        x = block(x) if not window or i in wanted_global else _windowed_block(block, x, grid, window)
    return x.transpose(1, 2).reshape(n, dim, *grid)  # (N, L, D) -> (N, D, H', W')
