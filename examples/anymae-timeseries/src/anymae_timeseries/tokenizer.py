"""1-D patch tokenizer for multivariate time series: (N, C, T) -> (N, T/p, D)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from anymae.core import Tokenizer
from anymae.core.data.files import check_input_shape

__all__ = ["PatchTokenizer1d"]


class PatchTokenizer1d(Tokenizer):
    """series (N, C, T) -> tokens (N, L, D) with L = T/p; a patch is p time steps of every channel.

    The position table is the core's default 1-D sin-cos table over the grid ``(T/p,)``.
    """

    def __init__(self, *, channels: int, length: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if length % patch_size:
            raise ValueError(f"series length {length} is not divisible by patch {patch_size}")
        self.channels, self.length, self.patch_size = channels, length, patch_size
        self.grid = (length // patch_size,)
        self.patch_dim = patch_size * channels
        self.embed_dim = embed_dim
        # A Linear over each flattened patch: the 1-D analogue of MAE's Conv2d patch embedding, with the
        # same xavier-uniform init the official code gives that Conv viewed as a Linear.
        self.proj = nn.Linear(self.patch_dim, embed_dim)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _check(self, x: Tensor) -> None:
        check_input_shape(x, (self.channels, self.length), what="series", axes="(N, C, T)")

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T) -> (N, L, D)."""
        return self.proj(self.patchify(x))

    def patchify(self, x: Tensor) -> Tensor:
        """x: (N, C, T) -> (N, L, p*C), values ordered (time-in-patch, channel)."""
        self._check(x)
        return rearrange(x, "n c (l p) -> n l (p c)", p=self.patch_size)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, L, p*C) -> (N, C, T)."""
        return rearrange(patches, "n l (p c) -> n c (l p)", p=self.patch_size)
