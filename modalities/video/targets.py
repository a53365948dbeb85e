"""VideoMAE's reconstruction targets (reference section 3), registered as ``videomae`` and ``videomae_pixels``.

Both first undo the input normalization (ImageNet mean/std, as VideoMAE hard-codes; skipped for inputs
that are not 3-channel, as Hugging Face does) so that targets live in [0, 1] pixel space:

``videomae`` (VideoMAE's ``normlize_target=True``, Hugging Face ``norm_pix_loss=True``): every tubelet is
    normalized *per channel* over its t*p*p values with the unbiased std and eps 1e-6 *outside* the root,
    ``(x - mean) / (std + 1e-6)``; values ordered (t, p, q, c).
``videomae_pixels`` (``normlize_target=False``): the un-normalized tubelet values themselves.

``to_pixels`` maps a prediction back to the *input's* (normalized) patch values with the true statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from anymae.modalities.video.tokenizer import TubeletTokenizer

__all__ = ["VideoMAEPixelTarget", "VideoMAETarget"]


class _Unnormalized:
    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def _stats(self, patches: Tensor, tokenizer: TubeletTokenizer) -> tuple[Tensor, Tensor, int]:
        chans = tokenizer.in_chans
        if chans != len(self.mean):
            return patches.new_zeros(()), patches.new_ones(()), chans
        mean = torch.tensor(self.mean, dtype=patches.dtype, device=patches.device)
        std = torch.tensor(self.std, dtype=patches.dtype, device=patches.device)
        return mean, std, chans

    def unnormalize(self, patches: Tensor, tokenizer: TubeletTokenizer) -> Tensor:
        """(N, L, P) normalized input patches -> (N, L, t*p*p, C) pixel values."""
        mean, std, chans = self._stats(patches, tokenizer)
        return patches.unflatten(-1, (-1, chans)) * std + mean

    def normalize(self, pixels: Tensor, tokenizer: TubeletTokenizer) -> Tensor:
        """(N, L, t*p*p, C) pixel values -> (N, L, P) in the input's normalization."""
        mean, std, _ = self._stats(pixels, tokenizer)
        return ((pixels - mean) / std).flatten(-2)


class VideoMAETarget(_Unnormalized):
    """Per-tubelet, per-channel normalized pixels: VideoMAE's default target."""

    eps = 1e-6

    def statistics(self, patches: Tensor, tokenizer: TubeletTokenizer) -> tuple[Tensor, Tensor, Tensor]:
        """-> pixels (N, L, t*p*p, C), mean and std+eps (N, L, 1, C) over each tubelet's t*p*p values."""
        pixels = self.unnormalize(patches, tokenizer)
        mean = pixels.mean(dim=-2, keepdim=True)
        scale = pixels.var(dim=-2, unbiased=True, keepdim=True).sqrt() + self.eps  # eps outside the root
        return pixels, mean, scale

    def __call__(self, patches: Tensor, *, tokenizer: TubeletTokenizer) -> Tensor:
        pixels, mean, scale = self.statistics(patches, tokenizer)
        return ((pixels - mean) / scale).flatten(-2)  # (N, L, P) ordered (t, p, q, c)

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer: TubeletTokenizer) -> Tensor:
        _, mean, scale = self.statistics(patches, tokenizer)
        return self.normalize(pred.unflatten(-1, (-1, mean.shape[-1])) * scale + mean, tokenizer)


class VideoMAEPixelTarget(_Unnormalized):
    """Un-normalized pixels in [0, 1]: VideoMAE with ``normlize_target=False``."""

    def __call__(self, patches: Tensor, *, tokenizer: TubeletTokenizer) -> Tensor:
        return self.unnormalize(patches, tokenizer).flatten(-2)

    def to_pixels(self, pred: Tensor, patches: Tensor, *, tokenizer: TubeletTokenizer) -> Tensor:
        return self.normalize(pred.unflatten(-1, (-1, tokenizer.in_chans)), tokenizer)
