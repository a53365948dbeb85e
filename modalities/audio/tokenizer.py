"""Spectrogram tokenizer: single-channel p x p patches over the (time x frequency) filter-bank image.

Input (N, 1, T, F), e.g. (N, 1, 1024, 128) -> grid (T/p, F/p) = (64, 8) -> 512 tokens numbered time-major
(index = t * F/p + f), as AudioMAE's Conv2d patch embedding flattens them.

Position table: AudioMAE builds its 2-D sin-cos table with ``get_2d_sincos_pos_embed_flexible(D, patch_hw)``
where ``patch_hw = (F/p, T/p)`` (its ``PatchEmbed_org`` swaps the two), i.e. the official image table for an
(F/p rows x T/p columns) grid, laid over the (T/p, F/p) token order. Token ``k`` therefore gets
``k mod (T/p)`` in the first half of the channels and ``k div (T/p)`` in the second half, not its own (t, f).
The released checkpoints store exactly that table, so anymae reproduces it.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from anymae.core.data.files import check_input_shape
from anymae.core.model.pos_embed import sincos_2d
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["SpectrogramTokenizer"]


class SpectrogramTokenizer(Tokenizer):
    """fbank (N, 1, T, F) -> tokens (N, L, D) with L = (T/p) * (F/p)."""

    def __init__(self, *, target_length: int, num_mel_bins: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if target_length % patch_size or num_mel_bins % patch_size:
            raise ValueError(
                f"spectrogram {target_length}x{num_mel_bins} (target_length x num_mel_bins) "
                f"is not divisible by patch {patch_size} (patch_size)"
            )
        self.input_size = (target_length, num_mel_bins)  # (T, F)
        self.patch_size = patch_size
        self.grid = (target_length // patch_size, num_mel_bins // patch_size)  # (T/p, F/p)
        self.patch_dim = patch_size * patch_size  # P, one channel
        self.embed_dim = embed_dim
        # Official key: patch_embed.proj, a Conv2d(1, D, p, stride p) = a Linear over each patch.
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))  # as a Linear (D, p*p), as the reference

    def _check(self, x: Tensor) -> None:
        check_input_shape(x, (1, *self.input_size), what="spectrograms", axes="(N, 1, T, F)")

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 1, T, F) -> (N, L, D)."""
        self._check(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, T/p, F/p) -> (N, L, D)

    def patchify(self, x: Tensor) -> Tensor:
        """x: (N, 1, T, F) -> (N, L, p*p), values ordered (time-in-patch, frequency-in-patch), ``nchpwq->nhwpqc``."""
        self._check(x)
        p = self.patch_size
        return rearrange(x, "n c (t p) (f q) -> n (t f) (p q c)", p=p, q=p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, L, p*p) -> (N, 1, T, F)."""
        p, (t, f) = self.patch_size, self.grid
        return rearrange(patches, "n (t f) (p q c) -> n c (t p) (f q)", t=t, f=f, p=p, q=p)

    def position_table(self, width: int) -> Tensor:
        """AudioMAE's fixed table (L, width): the image table of a (F/p, T/p) grid over the (T/p, F/p) tokens."""
        t, f = self.grid
        return sincos_2d((f, t), width)
