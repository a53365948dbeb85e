"""The tokenizer interface: everything the core needs to know about a modality's input.

A tokenizer turns one batch of inputs into tokens, into per-patch regression targets and back, and says
how its tokens are laid out (the grid) so that the core can build position tables and masks. The core
never looks at the raw input itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from anymae.core.model.pos_embed import sincos_1d, sincos_2d

__all__ = ["TokenEmbedder", "Tokenizer"]


class TokenEmbedder(nn.Module, ABC):
    """What a classifier's encoder needs of its input: tokens laid out on a grid, with a position table.

    Subclasses set ``grid`` (tokens numbered row-major over it, the last axis varies fastest) and ``embed_dim``
    (``D``) in ``__init__``. :class:`Tokenizer` adds the patches an MAE regresses; a composite model's classifier
    embeds several parts' inputs with one (:class:`~anymae.core.model.composite.PartsTokenizer`) and regresses nothing.
    """

    grid: tuple[int, ...]
    embed_dim: int

    @property
    def num_tokens(self) -> int:
        """L = product of the grid."""
        return math.prod(self.grid)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Embed an input batch into tokens: x -> (N, L, D), in grid order."""

    def position_table(self, width: int) -> Tensor:
        """The fixed position table for a given width: (L, width).

        Default: the official 2-D sin-cos table for a 2-D grid, a 1-D sin-cos table over the flattened
        order otherwise. Modalities override it when their reference uses another layout.
        """
        if len(self.grid) == 2:
            return sincos_2d((self.grid[0], self.grid[1]), width)
        return sincos_1d(torch.arange(self.num_tokens), width)


class Tokenizer(TokenEmbedder):
    """Base class of every modality's tokenizer.

    Subclasses set three attributes in ``__init__``:
        grid: token grid, e.g. ``(H/p, W/p)`` for images or ``(T/t, H/p, W/p)`` for video; tokens are
            numbered row-major over it (the last axis varies fastest).
        patch_dim: ``P``, the number of values per patch in ``patchify``'s output.
        embed_dim: ``D``, the token width produced by ``forward``.
    and initialise their own parameters (the core initialises only the encoder and decoder).
    """

    patch_dim: int

    @abstractmethod
    def patchify(self, x: Tensor) -> Tensor:
        """x -> (N, L, P): the regression target of each token, in grid order."""

    @abstractmethod
    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, L, P) -> x: the exact inverse of ``patchify``."""
