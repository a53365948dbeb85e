"""VideoMAE's decoder, registered as ``videomae`` (reference section 3).

It differs from the core's ``global`` decoder in three details that released weights depend on: the
encoder-to-decoder Linear has no bias (``encoder_to_decoder``), the final LayerNorm's eps can differ
from the blocks' (Hugging Face's ``VideoMAEDecoder.norm`` keeps PyTorch's 1e-5 while its blocks use
``layer_norm_eps``), and, for MAE-ST-style models, it can carry its own learned separable space + time
positions (``learned_pos``). VideoMAE concatenates [visible, mask tokens] and shuffles the positions
instead of unshuffling the tokens; attention does not depend on token order, so unshuffling as the
core does gives the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from anymae.core.masking import gather_tokens, unshuffle_with_mask_tokens

__all__ = ["VideoMAEDecoder", "videomae_decoder"]


class VideoMAEDecoder(nn.Module):
    """Linear D -> D_dec (no bias), mask tokens, unshuffle, positions, blocks, LayerNorm, head D_dec -> P."""

    def __init__(
        self,
        *,
        in_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        out_dim: int,
        pos_table: Tensor,
        norm_layer: Callable[[int], nn.Module],
        grid: tuple[int, ...],
        num_prefix: int = 0,
        head_norm_eps: float | None = None,
        learned_pos: bool = False,
    ) -> None:
        super().__init__()
        if pos_table.shape[1] != embed_dim:
            raise ValueError(f"position table width {pos_table.shape[1]} != decoder width {embed_dim}")
        self.num_prefix = num_prefix
        self.embed = nn.Linear(in_dim, embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", pos_table[None].clone(), persistent=False)  # (1, L, D_dec)
        self.grid = tuple(grid)
        if learned_pos:
            if len(self.grid) != 3:
                raise ValueError(f"learned_pos needs a (t, h, w) grid, got {self.grid}")
            t, h, w = self.grid
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
            nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)  # MAE-ST's init
            nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)
        self.learned_pos = learned_pos
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim) if head_norm_eps is None else nn.LayerNorm(embed_dim, eps=head_norm_eps)
        self.pred = nn.Linear(embed_dim, out_dim)

    def positions(self) -> Tensor:
        """(1, L, D_dec): the fixed table, plus the learned separable one with ``learned_pos``."""
        if not self.learned_pos:
            return self.pos_embed
        t, h, w = self.grid
        learned = self.pos_embed_temporal.repeat_interleave(h * w, dim=1) + self.pos_embed_spatial.repeat(1, t, 1)
        return self.pos_embed + learned

    def forward(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        """latent (N, num_prefix + L_vis, D), ids_restore (N, L) -> pred (N, L, P) in grid order, or
        (N, L_sel, P) for the token ids ``select`` (N, L_sel) (VideoMAE's head on masked tokens)."""
        k = self.num_prefix
        x = self.embed(latent)  # (N, k + L_vis, D_dec)
        body = unshuffle_with_mask_tokens(x[:, k:], self.mask_token, ids_restore)  # (N, L, D_dec)
        x = torch.cat([x[:, :k], body + self.positions()], dim=1)  # prefix tokens carry no position
        for block in self.blocks:
            x = block(x)
        x = x[:, k:]  # (N, L, D_dec)
        if select is not None:
            x = gather_tokens(x, select)  # (N, L_sel, D_dec)
        return self.pred(self.norm(x))


def videomae_decoder(
    *,
    in_dim: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    qkv_bias: bool,
    out_dim: int,
    pos_table: Tensor,
    norm_layer: Callable[[int], nn.Module],
    grid: tuple[int, ...],
    num_prefix: int,
    head_norm_eps: float | None = None,
    learned_pos: bool = False,
) -> VideoMAEDecoder:
    """The ``videomae`` decoder builder; options ``head_norm_eps`` (default: the blocks' eps) and ``learned_pos``."""
    return VideoMAEDecoder(
        in_dim=in_dim,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        out_dim=out_dim,
        pos_table=pos_table,
        norm_layer=norm_layer,
        grid=grid,
        num_prefix=num_prefix,
        head_norm_eps=head_norm_eps,
        learned_pos=learned_pos,
    )
