"""The visible-only ViT encoder of MAE: no mask tokens ever enter it (paper section 3, Table 2)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .masking import gather_tokens
from .pos_embed import with_cls_slot

__all__ = ["LAYER_NORM", "MaskedEncoder"]

# Official MAE blocks use LayerNorm eps 1e-6 (timm's default is 1e-5).
LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)


class MaskedEncoder(nn.Module):
    """CLS token + fixed positions + timm ViT blocks + final LayerNorm, applied to the kept tokens only."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        pos_table: Tensor,
        norm_layer: Callable[[int], nn.Module] = LAYER_NORM,
        block_fn: Callable[..., nn.Module] = Block,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if pos_table.shape[1] != embed_dim:
            raise ValueError(f"position table width {pos_table.shape[1]} != encoder width {embed_dim}")
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, recomputed from the grid: derived data is not stored in checkpoints.
        self.register_buffer("pos_embed", with_cls_slot(pos_table), persistent=False)  # (1, 1+L, D)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=rates[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, tokens: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """tokens: (N, L, D), ids_keep: (N, L_vis) or None for all -> (N, 1 + L_vis, D)."""
        x = tokens + self.pos_embed[:, 1:]  # positions are added before masking
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)  # (N, L_vis, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L_vis, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
