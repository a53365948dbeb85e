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
    """[CLS token] + fixed positions + timm ViT blocks + final LayerNorm, applied to the kept tokens only.

    ``cls_token=False`` gives VideoMAE's encoder, which has no prefix token (``num_prefix`` is 0).
    """

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
        cls_token: bool = True,
    ) -> None:
        super().__init__()
        if pos_table.shape[1] != embed_dim:
            raise ValueError(f"position table width {pos_table.shape[1]} != encoder width {embed_dim}")
        self.embed_dim = embed_dim
        self.num_prefix = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        # Fixed, recomputed from the grid: derived data is not stored in checkpoints.
        table = with_cls_slot(pos_table) if cls_token else pos_table[None]
        self.register_buffer("pos_embed", table, persistent=False)  # (1, num_prefix + L, D)
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
        """tokens: (N, L, D), ids_keep: (N, L_vis) or None for all -> (N, num_prefix + L_vis, D)."""
        x = tokens + self.pos_embed[:, self.num_prefix :]  # positions are added before masking
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)  # (N, L_vis, D)
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (N, 1, D)
            x = torch.cat([cls, x], dim=1)  # (N, 1 + L_vis, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
