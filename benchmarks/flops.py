"""Analytic FLOP counts of one MAE pre-training step, generic over token counts (image, video, audio).

A multiply-add counts as 2 FLOPs. Counted: every matrix product (patch embedding, qkv, attention scores,
attention-weighted values, projections, MLPs, encoder-to-decoder Linear, prediction head). Not counted:
LayerNorm, softmax, GELU, residual adds, the loss and the optimizer (element-wise, < 2% of the total at
ViT-B). Backward = 2x forward (gradients of inputs and of weights), except the patch embedding, whose
input (the data) needs no gradient: 1x. One training step per sample is therefore

    3 * (encoder + decoder + head) + 2 * patch_embed

with, for a stack of ``depth`` blocks of width ``D``, MLP ratio ``r`` over ``T`` tokens and attention
windows of ``W`` tokens (``W = T`` for global attention):

    per block = 2*T*D*3D (qkv) + 2*T*W*D (q k^T) + 2*T*W*D (attn v) + 2*T*D*D (proj) + 2*2*T*D*rD (MLP)
              = (8 + 4r) * T * D^2 + 4 * T * W * D
    encoder: T = prefix + L_vis;  decoder: T = prefix + L;  patch_embed = 2 * L * D * P_in
    encoder->decoder Linear = 2 * (prefix + L_vis) * D * D_dec;  head = 2 * T_head * D_dec * P_out
    T_head = prefix + L (official: the head runs on the CLS slot too), L (anymae drops the prefix first)
             or L - L_vis (``pred_masked_only``)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["SHAPES", "MaeShape", "block_flops", "shape_from_model", "train_flops_per_sample"]


@dataclass(frozen=True)
class MaeShape:
    """The numbers a FLOP count needs; any modality reduces to these."""

    tokens: int  # L
    keep: int  # L_vis
    patch_in: int  # values the patch embedding reads per token (C*p*p, C*t*p*p, ...)
    patch_out: int  # P, values the head predicts per token
    embed_dim: int
    depth: int
    mlp_ratio: float
    decoder_embed_dim: int
    decoder_depth: int
    decoder_mlp_ratio: float
    prefix: int = 1  # 1 with a CLS token, 0 without (VideoMAE)
    pred_masked_only: bool = False
    decoder_window: int | None = None  # tokens per attention window in the decoder; None = global
    head_on_prefix: bool = True  # the official head also runs on the CLS slot (dropped after it); anymae's not


def block_flops(tokens: int, width: int, mlp_ratio: float, window: int | None = None) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``tokens`` tokens."""
    w = tokens if window is None else window
    return (8 + 4 * mlp_ratio) * tokens * width**2 + 4 * tokens * w * width


def forward_flops_per_sample(s: MaeShape) -> dict[str, float]:
    """Forward FLOPs per sample, by stage."""
    t_enc, t_dec = s.prefix + s.keep, s.prefix + s.tokens
    t_head = s.tokens - s.keep if s.pred_masked_only else s.tokens + (s.prefix if s.head_on_prefix else 0)
    return {
        "patch_embed": 2.0 * s.tokens * s.embed_dim * s.patch_in,
        "encoder": s.depth * block_flops(t_enc, s.embed_dim, s.mlp_ratio),
        "decoder_embed": 2.0 * t_enc * s.embed_dim * s.decoder_embed_dim,
        "decoder": s.decoder_depth * block_flops(t_dec, s.decoder_embed_dim, s.decoder_mlp_ratio, s.decoder_window),
        "head": 2.0 * t_head * s.decoder_embed_dim * s.patch_out,
    }


def train_flops_per_sample(s: MaeShape) -> float:
    """FLOPs of forward + backward for one sample (see the module docstring)."""
    parts = forward_flops_per_sample(s)
    return 3.0 * sum(parts.values()) - parts["patch_embed"]


def shape_from_model(model: Any, *, pred_masked_only: bool = False) -> MaeShape:
    """The shape of a built anymae model, read from its modules (so it follows any modality's tokenizer)."""
    tok, enc, dec = model.tokenizer, model.encoder, model.decoder
    grid = tok.grid
    _, keep = model.masking(batch=1, grid=grid, mask_ratio=model.mask_ratio, device="cpu")
    weights = sum(p.numel() for p in tok.parameters() if p.ndim > 1)
    d = tok.embed_dim
    block = enc.blocks[0]
    prefix = 1 if getattr(enc, "cls_token", None) is not None else 0  # the encoder's num_prefix
    dec_block = dec.blocks[0] if dec is not None and len(dec.blocks) else None
    dec_block = getattr(dec_block, "block", dec_block)  # unwrap a checkpointing wrapper
    dec_width = dec.embed.out_features if dec is not None else 0
    return MaeShape(
        tokens=math.prod(grid),
        keep=keep,
        patch_in=weights // d,
        patch_out=tok.patch_dim,
        embed_dim=d,
        depth=len(enc.blocks),
        mlp_ratio=block.mlp.fc1.out_features / d,
        decoder_embed_dim=dec_width,
        decoder_depth=len(dec.blocks) if dec is not None else 0,
        decoder_mlp_ratio=dec_block.mlp.fc1.out_features / dec_width if dec_block is not None else 4.0,
        prefix=prefix,
        pred_masked_only=pred_masked_only,
        head_on_prefix=False,  # core/model/decoder.py drops the prefix before the head
    )


def _image(patch: int, width: int, depth: int, size: int = 224) -> MaeShape:
    tokens = (size // patch) ** 2
    return MaeShape(
        tokens=tokens,
        keep=int(tokens * 0.25),
        patch_in=3 * patch * patch,
        patch_out=3 * patch * patch,
        embed_dim=width,
        depth=depth,
        mlp_ratio=4.0,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_mlp_ratio=4.0,
    )


# The paper's shapes (reference sections 1, 3, 4): mask 0.75 / 0.9 (tube: 20 of 196 kept per time slice) / 0.8.
SHAPES: dict[str, MaeShape] = {
    "vit_b16": _image(16, 768, 12),
    "vit_l16": _image(16, 1024, 24),
    "vit_h14": _image(14, 1280, 32),
    "videomae_b": MaeShape(
        tokens=8 * 196,
        keep=8 * (196 - int(0.9 * 196)),
        patch_in=3 * 2 * 16 * 16,
        patch_out=3 * 2 * 16 * 16,
        embed_dim=768,
        depth=12,
        mlp_ratio=4.0,
        decoder_embed_dim=384,
        decoder_depth=4,
        decoder_mlp_ratio=4.0,
        prefix=0,
        pred_masked_only=True,
    ),
    "audiomae_b": MaeShape(
        tokens=64 * 8,
        keep=int(512 * 0.2),
        patch_in=16 * 16,
        patch_out=16 * 16,
        embed_dim=768,
        depth=12,
        mlp_ratio=4.0,
        decoder_embed_dim=512,
        decoder_depth=16,
        decoder_mlp_ratio=4.0,
        decoder_window=16,  # 4x4-token shifted windows
    ),
}


def masked_only(shape: MaeShape) -> MaeShape:
    return replace(shape, pred_masked_only=True)


if __name__ == "__main__":
    for name, shape in SHAPES.items():
        fwd = forward_flops_per_sample(shape)
        print(f"{name:12s} train {train_flops_per_sample(shape) / 1e9:8.2f} GFLOP/sample  forward {fwd}")
