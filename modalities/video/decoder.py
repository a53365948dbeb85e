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

from typing import Unpack

import torch
from torch import Tensor, nn

from anymae.core.model.decoder import DecoderArgs, MaskTokenDecoder, decoder_blocks
from anymae.core.model.encoder import fixed_positions

__all__ = ["VideoMAEDecoder", "videomae_decoder"]


class VideoMAEDecoder(MaskTokenDecoder):
    """Linear D -> D_dec (no bias), mask tokens, unshuffle, positions, blocks, LayerNorm, head D_dec -> P.

    The class is the ``videomae`` decoder builder; options ``head_norm_eps`` (default: the blocks' eps) and
    ``learned_pos``.
    """

    def __init__(
        self, *, head_norm_eps: float | None = None, learned_pos: bool = False, **args: Unpack[DecoderArgs]
    ) -> None:
        embed_dim = args["embed_dim"]
        # (1, L, D_dec): no CLS row, prefix tokens carry no position
        table = fixed_positions(args["pos_table"], width=embed_dim, cls_slot=False, part="decoder").clone()
        super().__init__(
            in_dim=args["in_dim"], embed_dim=embed_dim, pos_embed=table, num_prefix=args["num_prefix"], embed_bias=False
        )
        self.grid = tuple(args["grid"])
        if learned_pos:
            if len(self.grid) != 3:
                raise ValueError(f"learned_pos needs a (t, h, w) grid, got {self.grid}")
            t, h, w = self.grid
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
            nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)  # MAE-ST's init
            nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)
        self.learned_pos = learned_pos
        self.blocks = decoder_blocks(args)
        norm_layer = args["norm_layer"]
        self.norm = norm_layer(embed_dim) if head_norm_eps is None else nn.LayerNorm(embed_dim, eps=head_norm_eps)
        self.pred = nn.Linear(embed_dim, args["out_dim"])

    def positions(self) -> Tensor:
        """(1, L, D_dec): the fixed table, plus the learned separable one with ``learned_pos``."""
        if not self.learned_pos:
            return self.pos_embed
        t, h, w = self.grid
        learned = self.pos_embed_temporal.repeat_interleave(h * w, dim=1) + self.pos_embed_spatial.repeat(1, t, 1)
        return self.pos_embed + learned

    def forward_blocks(self, prefix: Tensor, body: Tensor) -> Tensor:
        """prefix (N, k, D_dec), body (N, L, D_dec) -> (N, L, D_dec)."""
        x = torch.cat([prefix, body + self.positions()], dim=1)  # prefix tokens carry no position
        for block in self.blocks:
            x = block(x)
        return x[:, self.num_prefix :]  # (N, L, D_dec)


# The builder is the class itself (as AudioMAE's ``local``); this name stays for code that imports it.
videomae_decoder = VideoMAEDecoder
