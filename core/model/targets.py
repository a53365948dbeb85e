"""Reconstruction targets: what the decoder regresses for each token, and the way back for figures.

A target maps the tokenizer's patches ``(N, L, P)`` to the regression target ``(N, L, P)``; ``to_pixels``
maps a prediction back to patch values using the ground-truth patches' statistics, as the MAE paper's
figures do for norm-pix models. Plugins register more through ``anymae_register_targets``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from anymae.core.model.loss import normalize_patches
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["NormPixTarget", "PixelTarget", "Target"]


@runtime_checkable
class Target(Protocol):
    """What ``register(name, target)`` in ``anymae_register_targets`` accepts."""

    def __call__(self, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        """patches (N, L, P) from ``tokenizer.patchify`` -> target (N, L, P)."""
        ...

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        """pred (N, L, P) in target space -> patch values (N, L, P), given the true patches."""
        ...


class PixelTarget:
    """The patches themselves (the official code's default, ``norm_pix_loss=False``)."""

    def __call__(self, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        return patches

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        return pred


class NormPixTarget:
    """Each patch normalized by its own mean and unbiased std, eps 1e-6 inside the root (``norm_pix_loss``)."""

    def __call__(self, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        return normalize_patches(patches)[0]

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer: Tokenizer) -> Tensor:
        _, mean, std = normalize_patches(patches)
        return pred * std + mean
