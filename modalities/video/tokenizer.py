"""Tubelet tokenizer: clips (N, C, T, H, W) -> (T/t) x (H/p) x (W/p) tokens through one Conv3d (VideoMAE).

Position tables (``pos_embed``):
    ``videomae``: VideoMAE's fixed 1-D sinusoid over the flattened (t, h, w) order, channels *interleaved*
        (even channel 2i = sin(pos / 10000^(2i/D)), odd channel 2i+1 = cos of the same angle); this is what
        released VideoMAE checkpoints were trained with (they do not store it).
    ``sincos_3d``: fixed; the first D/2 channels encode the time index (1-D sin-cos), the second D/2 are
        the official MAE 2-D table of the spatial position (column, then row).
    ``learned``: MAE-ST's separable learned embeddings, ``pos_embed_spatial (1, h*w, D)`` +
        ``pos_embed_temporal (1, t, D)``, initialised N(0, 0.02) truncated; the tokenizer adds them in
        ``forward`` and ``position_table`` returns zeros (the core adds a fixed table). The decoder then has
        no positions of its own unless it brings them: use ``decoder: videomae`` with
        ``decoder_options: {learned_pos: true}``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from anymae.core.data.files import check_input_shape
from anymae.core.model.pos_embed import sincos_1d, sincos_2d
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["POSITION_TABLES", "TubeletTokenizer", "sincos_3d", "videomae_sinusoid"]

POSITION_TABLES = ("videomae", "sincos_3d", "learned")


def videomae_sinusoid(num_positions: int, width: int) -> Tensor:
    """VideoMAE's table: (L, width), angle(pos, j) = pos / 10000^(2 * (j // 2) / width), sin on even j,
    cos on odd j, computed in float64 and stored as float32 (as its numpy code does)."""
    j = torch.arange(width, dtype=torch.float64)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] / 10000.0 ** (2 * (j // 2) / width)
    table = torch.where(j.long() % 2 == 0, angles.sin(), angles.cos())  # (L, width)
    return table.float()


def sincos_3d(grid: tuple[int, int, int], width: int) -> Tensor:
    """grid (t, h, w) -> (t*h*w, width): [1-D sin-cos of the time index (width/2) | MAE 2-D table (width/2)]."""
    if width % 8:
        raise ValueError(f"a 3-D sin-cos table needs a width divisible by 8, got {width}")
    t, h, w = grid
    time = sincos_1d(torch.arange(t), width // 2)  # (t, width/2)
    space = sincos_2d((h, w), width // 2)  # (h*w, width/2)
    return torch.cat([time.repeat_interleave(h * w, dim=0), space.repeat(t, 1)], dim=1)  # (t*h*w, width)


class TubeletTokenizer(Tokenizer):
    """clips (N, C, T, H, W) -> tokens (N, L, D), L = (T/t)(H/p)(W/p), numbered row-major over (t, h, w).

    A batch of repeated samples (N, S, C, T, H, W) (``data.num_sample`` > 1) is folded into N*S clips by
    ``forward``, ``patchify`` and the targets alike, so every clip gets its own mask (VideoMAE's
    ``multiple_samples_collate``).
    """

    def __init__(
        self,
        *,
        num_frames: int,
        img_size: tuple[int, int],
        patch_size: int,
        tubelet_size: int,
        in_chans: int,
        embed_dim: int,
        pos_embed: Literal["videomae", "sincos_3d", "learned"] = "videomae",
    ) -> None:
        super().__init__()
        h, w = img_size
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
        if h % patch_size or w % patch_size:
            raise ValueError(f"frames {h}x{w} are not divisible by patch_size {patch_size}")
        if pos_embed not in POSITION_TABLES:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; expected one of {', '.join(POSITION_TABLES)}")
        self.num_frames, self.img_size, self.in_chans = num_frames, (h, w), in_chans
        self.patch_size, self.tubelet_size, self.pos_embed = patch_size, tubelet_size, pos_embed
        self.grid = (num_frames // tubelet_size, h // patch_size, w // patch_size)
        self.patch_dim = tubelet_size * patch_size * patch_size * in_chans
        self.embed_dim = embed_dim
        kernel = (tubelet_size, patch_size, patch_size)
        # VideoMAE keeps PyTorch's default Conv3d init: its _init_weights touches only Linear and LayerNorm.
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        if pos_embed == "learned":
            t, gh, gw = self.grid
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, gh * gw, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
            nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)  # MAE-ST's init
            nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)

    def fold(self, x: Tensor) -> Tensor:
        """(N, C, T, H, W) as is, or repeated samples (N, S, C, T, H, W) -> (N*S, C, T, H, W); checks the shape."""
        if x.ndim == 6:
            x = x.flatten(0, 1)
        expected = (self.in_chans, self.num_frames, *self.img_size)
        check_input_shape(x, expected, what="clips", axes="(N, C, T, H, W)")
        return x

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T, H, W) -> (N, L, D)."""
        tokens = self.proj(self.fold(x)).flatten(2).transpose(1, 2)  # (N, D, t, h, w) -> (N, L, D)
        if self.pos_embed == "learned":
            t, h, w = self.grid
            table = self.pos_embed_temporal.repeat_interleave(h * w, dim=1) + self.pos_embed_spatial.repeat(1, t, 1)
            tokens = tokens + table  # (N, L, D)
        return tokens

    def patchify(self, x: Tensor) -> Tensor:
        """x: (N, C, T, H, W) -> (N, L, t*p*p*C), values ordered (frame-in-tubelet, row, column, channel)
        as VideoMAE's ``rearrange(..., 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)')``."""
        p, pt = self.patch_size, self.tubelet_size
        return rearrange(self.fold(x), "n c (t pt) (h p) (w q) -> n (t h w) (pt p q c)", pt=pt, p=p, q=p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, L, t*p*p*C) -> (N, C, T, H, W), the exact inverse of ``patchify``."""
        (t, h, w), p, pt = self.grid, self.patch_size, self.tubelet_size
        return rearrange(patches, "n (t h w) (pt p q c) -> n c (t pt) (h p) (w q)", t=t, h=h, w=w, pt=pt, p=p, q=p)

    def position_table(self, width: int) -> Tensor:
        """The fixed (L, width) table added by the core (zeros for ``learned``: see the module docstring)."""
        if self.pos_embed == "videomae":
            return videomae_sinusoid(math.prod(self.grid), width)
        if self.pos_embed == "sincos_3d":
            return sincos_3d(self.grid, width)
        return torch.zeros(math.prod(self.grid), width)
