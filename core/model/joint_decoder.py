"""One decoder over every part of a composite model (``model.joint_decoder: true``; CAV-MAE's joint decoder).

Each part's encoded visible tokens and one shared mask token for each of its removed tokens are put back in the
part's grid order, given the part's own fixed decoder positions and a learned decoder modality embedding, and
concatenated over the parts; the transformer blocks run over all of them, so a removed audio patch is predicted
while attending to the video's tokens directly; a LayerNorm and a per-part Linear head D_dec -> P_p follow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from anymae.core.model.encoder import vit_blocks
from anymae.core.model.masking import unshuffle_with_mask_tokens

__all__ = ["JointDecoder"]


class JointDecoder(nn.Module):
    """Linear D -> D_dec, mask tokens, per-part positions and modality embeddings, shared blocks over all parts'
    tokens, LayerNorm, a Linear D_dec -> P_p head per part.

    ``tables``: part -> its fixed decoder position table (L_p, D_dec); ``out_dims``: part -> P_p.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        tables: dict[str, Tensor],
        out_dims: dict[str, int],
        num_prefix: int,
        norm_layer: Callable[[int], nn.Module],
        block_fn: Callable[..., nn.Module] = Block,
    ) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.modality_embed = nn.ParameterDict({name: nn.Parameter(torch.zeros(1, 1, embed_dim)) for name in tables})
        for name, table in tables.items():  # fixed, recomputed from the grids: not stored in checkpoints
            if table.shape[1] != embed_dim:
                raise ValueError(f"part {name}: decoder position table width {table.shape[1]} != {embed_dim}")
            self.register_buffer(f"pos_{name}", table[None], persistent=False)  # (1, L_p, D_dec)
        self.blocks = vit_blocks(block_fn, depth=depth, dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, norm_layer=norm_layer)  # fmt: skip
        self.norm = norm_layer(embed_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, dim) for name, dim in out_dims.items()})

    def forward(self, latent: Tensor, parts: dict[str, tuple[slice, Tensor, Tensor]]) -> dict[str, Tensor]:
        """latent (N, num_prefix + L_vis, D); parts: part -> (its visible tokens' columns of ``latent``,
        ids_restore (N, L_p), present (N,) bool) -> part -> pred (N, L_p, P_p) in grid order.

        A part absent from ``parts`` has no tokens here; in a sample that lacks a part, that part's visible slots
        are replaced by mask tokens, so nothing of it reaches the others."""
        x = self.embed(latent)  # (N, num_prefix + L_vis, D_dec)
        k = self.num_prefix
        bodies, spans, start = [x[:, :k]], {}, k  # the prefix's decoder position is zero (the official CLS row)
        for name, (columns, ids_restore, present) in parts.items():
            own = torch.where(present[:, None, None], x[:, columns], self.mask_token)  # (N, K_p, D_dec)
            body = unshuffle_with_mask_tokens(own, self.mask_token, ids_restore)  # (N, L_p, D_dec), grid order
            pos = self.get_buffer(f"pos_{name}")  # named for the part, a name from the config (model.parts)
            bodies.append(body + pos + self.modality_embed[name])
            spans[name] = (start, start + body.shape[1])
            start += body.shape[1]
        x = torch.cat(bodies, dim=1)  # (N, num_prefix + sum L_p, D_dec)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return {name: self.heads[name](x[:, a:b]) for name, (a, b) in spans.items()}
