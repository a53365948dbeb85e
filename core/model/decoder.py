"""The MAE decoder: one shared mask token, unshuffle, its own fixed positions, a per-patch prediction head.

:class:`MaskTokenDecoder` is the part every mask-token decoder shares (the core's ``global`` one here, and
plugins' decoders such as VideoMAE's and AudioMAE's); a decoder says only where positions go and what blocks
it runs.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Protocol, TypedDict, Unpack, runtime_checkable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from anymae.core.model.encoder import fixed_positions, vit_blocks
from anymae.core.model.masking import gather_tokens, unshuffle_with_mask_tokens

__all__ = [
    "DecoderArgs",
    "LearnedMaskToken",
    "MaskTokenDecoder",
    "MaskedDecoder",
    "TransformerBlocks",
    "decoder_blocks",
]


class DecoderArgs(TypedDict):
    """What the core passes every decoder builder (``anymae_register_decoders``), from ``model.*`` and the
    tokenizer. A builder declares them as ``**args: Unpack[DecoderArgs]`` and its own options (set in
    ``model.decoder_options``) as named keywords."""

    in_dim: int  # D, the encoder's width
    embed_dim: int  # D_dec
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    out_dim: int  # P, values per patch
    pos_table: Tensor  # (L, D_dec), the tokenizer's fixed table for the decoder's width, no prefix row
    norm_layer: Callable[[int], nn.Module]
    grid: tuple[int, ...]  # the token grid, e.g. (H/p, W/p)
    num_prefix: int  # 1 with a CLS token, else 0


@runtime_checkable
class LearnedMaskToken(Protocol):
    """A decoder that fills removed tokens with one learned ``mask_token`` (1, 1, D_dec) (every
    :class:`MaskTokenDecoder`, the composite's joint decoder, a plugin's own): the model gives it the official
    N(0, 0.02) init (``anymae_register_decoders``)."""

    mask_token: nn.Parameter


@runtime_checkable
class TransformerBlocks(Protocol):
    """A part of a model that runs its tokens through ``blocks``, a list of transformer blocks: what
    ``train.compile`` compiles and activation checkpointing wraps one by one."""

    blocks: nn.ModuleList


def decoder_blocks(args: DecoderArgs, block_fn: Callable[..., nn.Module] = Block) -> nn.ModuleList:
    """The ``depth`` transformer blocks of a decoder of ``args`` (timm's ViT block by default)."""
    return vit_blocks(
        block_fn,
        depth=args["depth"],
        dim=args["embed_dim"],
        num_heads=args["num_heads"],
        mlp_ratio=args["mlp_ratio"],
        qkv_bias=args["qkv_bias"],
        norm_layer=args["norm_layer"],
    )


class MaskTokenDecoder(nn.Module, metaclass=ABCMeta):
    """Linear D -> D_dec (``embed``), one shared learned ``mask_token`` for every removed token, unshuffle to
    grid order, :meth:`forward_blocks` (positions and blocks), LayerNorm (``norm``), Linear D_dec -> P (``pred``).

    A subclass calls ``super().__init__`` first, then sets ``blocks``, ``norm`` and ``pred`` in that order, and
    implements :meth:`forward_blocks`. The order fixes the random draws made while building and the checkpoint
    key order, which released weights and the parity tests depend on. ``pos_embed`` is the subclass's fixed
    position buffer, in the layout it reads.
    """

    blocks: nn.ModuleList
    norm: nn.Module
    pred: nn.Module

    def __init__(
        self, *, in_dim: int, embed_dim: int, pos_embed: Tensor, num_prefix: int, embed_bias: bool = True
    ) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(in_dim, embed_dim, bias=embed_bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", pos_embed, persistent=False)

    @abstractmethod
    def forward_blocks(self, prefix: Tensor, body: Tensor) -> Tensor:
        """prefix (N, num_prefix, D_dec), body (N, L, D_dec) in grid order -> (N, L, D_dec): positions added,
        the blocks run, the prefix dropped."""

    def forward(self, latent: Tensor, ids_restore: Tensor, select: Tensor | None = None) -> Tensor:
        """latent: (N, num_prefix + L_vis, D), ids_restore: (N, L) -> pred (N, L, P) in the original token
        order, or (N, L_sel, P) for the token ids ``select`` (N, L_sel): the head runs on those only."""
        k = self.num_prefix
        x = self.embed(latent)  # (N, k + L_vis, D_dec)
        body = unshuffle_with_mask_tokens(x[:, k:], self.mask_token, ids_restore)  # (N, L, D_dec), grid order
        x = self.forward_blocks(x[:, :k], body)  # (N, L, D_dec)
        if select is not None:
            x = gather_tokens(x, select)  # (N, L_sel, D_dec)
        return self.pred(self.norm(x))


class MaskedDecoder(MaskTokenDecoder):
    """Linear D -> D_dec, mask tokens, unshuffle, positions, blocks, LayerNorm, Linear D_dec -> P.

    ``num_prefix`` is the number of prefix (CLS) tokens the encoder puts first: 1 for MAE, 0 for VideoMAE.
    """

    def __init__(self, *, block_fn: Callable[..., nn.Module] = Block, **args: Unpack[DecoderArgs]) -> None:
        num_prefix, embed_dim = args["num_prefix"], args["embed_dim"]
        table = fixed_positions(args["pos_table"], width=embed_dim, cls_slot=bool(num_prefix), part="decoder")
        if num_prefix not in (0, 1):
            raise ValueError(f"num_prefix must be 0 or 1, got {num_prefix}")
        # (1, num_prefix + L, D_dec): the official layout, with the CLS row
        super().__init__(in_dim=args["in_dim"], embed_dim=embed_dim, pos_embed=table, num_prefix=num_prefix)
        self.blocks = decoder_blocks(args, block_fn)
        self.norm = args["norm_layer"](embed_dim)
        self.pred = nn.Linear(embed_dim, args["out_dim"])

    def forward_blocks(self, prefix: Tensor, body: Tensor) -> Tensor:
        """prefix (N, k, D_dec), body (N, L, D_dec) -> (N, L, D_dec); the prefix's position is the zero CLS row."""
        x = torch.cat([prefix, body], dim=1) + self.pos_embed  # (N, k + L, D_dec)
        for block in self.blocks:
            x = block(x)
        return x[:, self.num_prefix :]  # drop the prefix: (N, L, D_dec)
