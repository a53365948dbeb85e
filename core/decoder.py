"""The MAE decoder: one shared mask token, unshuffle, its own fixed positions, a per-patch prediction head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .encoder import LAYER_NORM
from .masking import gather_tokens, unshuffle_with_mask_tokens
from .pos_embed import with_cls_slot

__all__ = ["MaskedDecoder"]


class MaskedDecoder(nn.Module):
    """Linear D -> D_dec, mask tokens, unshuffle, positions, blocks, LayerNorm, Linear D_dec -> P.

    ``num_prefix`` is the number of prefix (CLS) tokens the encoder puts first: 1 for MAE, 0 for VideoMAE.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_dim: int,
        pos_table: Tensor,
        norm_layer: Callable[[int], nn.Module] = LAYER_NORM,
        block_fn: Callable[..., nn.Module] = Block,
        qkv_bias: bool = True,
        num_prefix: int = 1,
    ) -> None:
        super().__init__()
        if pos_table.shape[1] != embed_dim:
            raise ValueError(f"position table width {pos_table.shape[1]} != decoder width {embed_dim}")
        if num_prefix not in (0, 1):
            raise ValueError(f"num_prefix must be 0 or 1, got {num_prefix}")
        self.num_prefix = num_prefix
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        table = with_cls_slot(pos_table) if num_prefix else pos_table[None]
        self.register_buffer("pos_embed", table, persistent=False)  # (1, num_prefix + L, D_dec)
        self.blocks = nn.ModuleList(
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
            )
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)

    def forward(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        """latent: (N, num_prefix + L_vis, D), ids_restore: (N, L) -> pred (N, L, P) in the original token
        order, or (N, L_sel, P) for the token ids ``select`` (N, L_sel): the head runs on those only."""
        k = self.num_prefix
        x = self.embed(latent)  # (N, k + L_vis, D_dec)
        body = unshuffle_with_mask_tokens(x[:, k:], self.mask_token, ids_restore)  # (N, L, D_dec), grid order
        x = torch.cat([x[:, :k], body], dim=1) + self.pos_embed  # (N, k + L, D_dec)
        for block in self.blocks:
            x = block(x)
        x = x[:, k:]  # drop the prefix: (N, L, D_dec)
        if select is not None:
            x = gather_tokens(x, select)  # (N, L_sel, D_dec)
        return self.pred(self.norm(x))
