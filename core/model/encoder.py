"""The visible-only ViT encoder of MAE: no mask tokens ever enter it (paper section 3, Table 2)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from anymae.core.model.masking import gather_tokens
from anymae.core.model.pos_embed import with_cls_slot

__all__ = ["LAYER_NORM", "MaskedEncoder", "fixed_positions", "vit_blocks"]

# Official MAE blocks use LayerNorm eps 1e-6 (timm's default is 1e-5).
LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)


def fixed_positions(pos_table: Tensor, *, width: int, cls_slot: bool, part: str) -> Tensor:
    """The tokenizer's table (L, D) as a position buffer (1, [1 +] L, D), with the official all-zero CLS row
    when ``cls_slot``. Fails when D is not the ``part``'s (encoder's, decoder's) ``width``."""
    if pos_table.shape[1] != width:
        raise ValueError(f"position table width {pos_table.shape[1]} != {part} width {width}")
    return with_cls_slot(pos_table) if cls_slot else pos_table[None]


def vit_blocks(
    block_fn: Callable[..., nn.Module],
    *,
    depth: int,
    dim: int,
    num_heads: int,
    mlp_ratio: float,
    qkv_bias: bool,
    norm_layer: Callable[[int], nn.Module],
    drop_path_rate: float | None = None,
) -> nn.ModuleList:
    """``depth`` transformer blocks ``block_fn(dim=, num_heads=, mlp_ratio=, qkv_bias=, norm_layer=)``.

    With ``drop_path_rate`` (the encoder's stochastic depth) block ``i`` also gets ``drop_path`` rising
    linearly from 0 to the rate, as the official fine-tuning; without it ``drop_path`` is not passed.
    """
    make = partial(
        block_fn, dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer
    )
    if drop_path_rate is None:
        return nn.ModuleList(make() for _ in range(depth))
    return nn.ModuleList(make(drop_path=rate) for rate in torch.linspace(0, drop_path_rate, depth).tolist())


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
        # Fixed, recomputed from the grid: derived data is not stored in checkpoints.
        table = fixed_positions(pos_table, width=embed_dim, cls_slot=cls_token, part="encoder")
        self.embed_dim = embed_dim
        self.num_prefix = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.register_buffer("pos_embed", table, persistent=False)  # (1, num_prefix + L, D)
        self.blocks = vit_blocks(
            block_fn,
            depth=depth,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            drop_path_rate=drop_path_rate,
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, tokens: Tensor, ids_keep: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """tokens: (N, L, D), ids_keep: (N, L_vis) or None for all -> (N, num_prefix + L_vis, D).

        ``valid`` (N, L_vis) bool, False for kept slots that no token may attend to (a composite model's part
        removed from a sample): those slots are left out of every attention as keys."""
        x = tokens + self.pos_embed[:, self.num_prefix :]  # positions are added before masking
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)  # (N, L_vis, D)
        return self.forward_visible(x, valid)

    def forward_visible(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Visible tokens with their positions (N, L_vis, D) -> [CLS +] blocks + norm: (N, num_prefix + L_vis, D)."""
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (N, 1, D)
            x = torch.cat([cls, x], dim=1)  # (N, 1 + L_vis, D)
        if valid is None:
            for block in self.blocks:
                x = block(x)
            return self.norm(x)
        keys = torch.cat([valid.new_ones(valid.shape[0], self.num_prefix), valid], dim=1)  # (N, num_prefix + L_vis)
        attn_mask = keys[:, None, None, :]  # (N, 1, 1, num_prefix + L_vis), broadcast over heads and queries
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)
