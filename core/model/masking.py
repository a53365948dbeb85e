"""Random masking exactly as MAE (reference section 1), and the interface of masking strategies.

A masking strategy decides *which* tokens are removed by returning a per-token ``noise``: tokens are
sorted by it ascending and the first ``len_keep`` are kept. The paper's random masking is uniform noise;
structured strategies (tube, block, time/frequency) shape the noise instead. Everything downstream
(gathers, unshuffle, the binary mask) is shared.
"""

from __future__ import annotations

import math
from typing import NotRequired, Protocol, TypedDict, Unpack

import torch
from torch import Tensor

__all__ = [
    "MaskingArgs",
    "MaskingStrategy",
    "SampleMasker",
    "gather_tokens",
    "keep_count",
    "noise_from_mask",
    "random_masking",
    "sample_mask",
    "shuffle_from_noise",
    "unshuffle_with_mask_tokens",
]


class MaskingArgs(TypedDict):
    """What the core passes every masking strategy; a strategy declares them as ``**args: Unpack[MaskingArgs]``
    and its own options (``model.masking_options``) as named keywords."""

    batch: int  # N
    grid: tuple[int, ...]  # the token grid, e.g. (H/p, W/p)
    mask_ratio: float
    device: torch.device
    generator: NotRequired[torch.Generator | None]


class MaskingStrategy(Protocol):
    """``strategy(batch=N, grid=(..), mask_ratio=r, device=dev, generator=g) -> (noise (N, L), len_keep)``."""

    def __call__(self, **args: Unpack[MaskingArgs]) -> tuple[Tensor, int]: ...


def keep_count(num_tokens: int, mask_ratio: float, *, name: str = "mask_ratio", unit: str = "token") -> int:
    """``int(L * (1 - mask_ratio))``: 49 of 196 at 0.75, as the official code rounds.

    Fails unless ``0 <= mask_ratio < 1`` and at least one is kept; ``name`` (the ratio's config key) and
    ``unit`` (what is counted, e.g. ``"time row"`` for a strategy that masks along one axis) word the errors.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {mask_ratio}")
    len_keep = int(num_tokens * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"{name} {mask_ratio} keeps no {unit} of {num_tokens}")
    return len_keep


def random_masking(**args: Unpack[MaskingArgs]) -> tuple[Tensor, int]:
    """The paper's per-sample random masking: noise ~ U(0, 1) of shape (N, L)."""
    num_tokens = math.prod(args["grid"])
    noise = torch.rand(args["batch"], num_tokens, device=args["device"], generator=args.get("generator"))  # (N, L)
    return noise, keep_count(num_tokens, args["mask_ratio"])


def noise_from_mask(mask: Tensor) -> tuple[Tensor, int]:
    """A forced boolean mask (N, L), True = removed, as (noise, len_keep) for ``shuffle_from_noise``."""
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be a bool tensor (N, L), got {mask.dtype} {tuple(mask.shape)}")
    removed = mask.sum(dim=1)
    if not bool((removed == removed[0]).all()):
        raise ValueError(f"mask must remove the same number of tokens per row, got {removed.tolist()}")
    len_keep = mask.shape[1] - int(removed[0])
    if len_keep < 1:
        raise ValueError("mask removes every token")
    return mask.float(), len_keep


def shuffle_from_noise(noise: Tensor, len_keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """noise (N, L) -> ids_keep (N, L_vis), ids_restore (N, L), mask (N, L) float with 1 = removed.

    Small noise is kept. A stable sort keeps ties (forced masks, tubes) in token order.
    """
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (N, L)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L)
    ids_keep = ids_shuffle[:, :len_keep]  # (N, L_vis)
    mask = torch.ones_like(noise, dtype=torch.float32)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (N, L) back in the original token order
    return ids_keep, ids_restore, mask


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x (N, L, D), ids (N, K) -> (N, K, D). ``expand`` makes a view, not a copy like ``repeat``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unshuffle_with_mask_tokens(visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """The decoder's input: visible tokens (N, L_vis, D) followed by the shared ``mask_token`` (1, 1, D) for
    every removed one, put back in grid order with ``ids_restore`` (N, L) -> (N, L, D)."""
    n, num_tokens = ids_restore.shape
    fill = mask_token.expand(n, num_tokens - visible.shape[1], -1)  # (N, L - L_vis, D)
    return gather_tokens(torch.cat([visible, fill], dim=1), ids_restore)


def sample_mask(
    strategy: MaskingStrategy,
    *,
    batch: int,
    grid: tuple[int, ...],
    mask_ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A bool mask (N, L), True = removed, drawn from ``strategy`` (for held-out sets and figures, where
    the masks must be reproducible and follow the model's own strategy, e.g. tubes)."""
    noise, len_keep = strategy(batch=batch, grid=grid, mask_ratio=mask_ratio, device=device, generator=generator)
    return shuffle_from_noise(noise, len_keep)[2].bool()


class SampleMasker:
    """One sample's mask from a strategy: ``masker(generator) -> bool (L,)``, True = removed.

    The trainer draws masks in the data pipeline, one per sample with that sample's seeded generator, so
    a sample's mask does not depend on the batch, the rank or the worker that loads it (and a strategy
    that is a module-level function pickles into DataLoader workers).
    """

    def __init__(self, strategy: MaskingStrategy, grid: tuple[int, ...], mask_ratio: float) -> None:
        self.strategy, self.grid, self.mask_ratio = strategy, tuple(grid), mask_ratio

    def __call__(self, generator: torch.Generator) -> Tensor:
        mask = sample_mask(
            self.strategy,
            batch=1,
            grid=self.grid,
            mask_ratio=self.mask_ratio,
            device=torch.device("cpu"),
            generator=generator,
        )
        return mask[0]
