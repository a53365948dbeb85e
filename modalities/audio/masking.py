"""AudioMAE's time/frequency masking (its ``random_masking_2d``) as anymae masking strategies.

Over a (T', F') token grid, ``int(T' * (1 - p_t))`` random time rows and ``int(F' * (1 - p_f))`` random
frequency columns are kept; a token is kept when both its row and its column are, so every sample keeps
the same ``len_keep = keep_t * keep_f`` tokens. The official code then orders the kept tokens by their index
(not by the noise); a 0/1 noise (1 = removed) with the core's stable sort gives exactly that order, and the
same ``ids_restore``.

The strategy interface passes one ``mask_ratio``; the registered variants read it per axis:

* ``time_frequency``: rows *and* columns each removed at ``mask_ratio`` (AudioMAE's fine-tuning regulariser
  is this at 0.2: ``mask_t_prob = mask_f_prob = 0.2``);
* ``time``: whole time rows at ``mask_ratio`` (all frequencies kept);
* ``frequency``: whole frequency columns at ``mask_ratio``.

Other (p_t, p_f) pairs, e.g. the official ``mask_2d`` defaults (0.7, 0.3), come from the config as
``model.masking_options: {mask_t_prob: 0.7, mask_f_prob: 0.3}`` with ``masking: time_frequency`` (or from
``time_frequency_masking(mask_t_prob=..., mask_f_prob=...)`` in Python).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Unpack

import torch
from torch import Tensor

from anymae.core.model.masking import MaskingArgs, keep_count

__all__ = ["STRATEGIES", "time_frequency_mask", "time_frequency_masking"]


def _axis_keep(size: int, prob: float, name: str) -> int:
    """How many of the ``size`` time rows (``mask_t_prob``) or frequency columns (``mask_f_prob``) are kept."""
    return keep_count(size, prob, name=name, unit=f"{name.split('_')[1]} position")


def time_frequency_mask(
    *,
    batch: int,
    grid: tuple[int, ...],
    mask_t_prob: float,
    mask_f_prob: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The removed tokens (N, T'*F') as floats, 1 = removed, in grid order.

    Draws time noise (N, T') then frequency noise (N, F'), in that order, as the official code does.
    """
    if len(grid) != 2:
        raise ValueError(f"time/frequency masking needs a 2-D (time, frequency) grid, got {grid}")
    t, f = grid
    keep_t = _axis_keep(t, mask_t_prob, "mask_t_prob")
    keep_f = _axis_keep(f, mask_f_prob, "mask_f_prob")
    noise_t = torch.rand(batch, t, device=device, generator=generator)  # (N, T')
    noise_f = torch.rand(batch, f, device=device, generator=generator)  # (N, F')
    # Rank of each row/column in its noise order: the keep_* smallest are kept.
    rank_t = torch.argsort(torch.argsort(noise_t, dim=1), dim=1)  # (N, T')
    rank_f = torch.argsort(torch.argsort(noise_f, dim=1), dim=1)  # (N, F')
    removed_t = rank_t >= keep_t  # (N, T')
    removed_f = rank_f >= keep_f  # (N, F')
    removed = removed_t[:, :, None] | removed_f[:, None, :]  # (N, T', F')
    return removed.flatten(1).float()  # (N, L)


def time_frequency_masking(*, mask_t_prob: float, mask_f_prob: float) -> Callable[..., tuple[Tensor, int]]:
    """A masking strategy with fixed per-axis probabilities (its ``mask_ratio`` argument is ignored)."""
    return partial(_time_and_frequency, mask_t_prob=mask_t_prob, mask_f_prob=mask_f_prob)


def _time_and_frequency(
    *, mask_t_prob: float | None = None, mask_f_prob: float | None = None, **args: Unpack[MaskingArgs]
) -> tuple[Tensor, int]:
    """Time rows and frequency columns each removed at ``mask_ratio``, or at ``mask_t_prob`` / ``mask_f_prob``
    when given (``model.masking_options``: e.g. the official ``mask_2d`` defaults 0.7 / 0.3)."""
    grid = args["grid"]
    p_t = args["mask_ratio"] if mask_t_prob is None else mask_t_prob
    p_f = args["mask_ratio"] if mask_f_prob is None else mask_f_prob
    removed = time_frequency_mask(
        batch=args["batch"],
        grid=grid,
        mask_t_prob=p_t,
        mask_f_prob=p_f,
        device=args["device"],
        generator=args.get("generator"),
    )
    len_keep = _axis_keep(grid[0], p_t, "mask_t_prob") * _axis_keep(grid[1], p_f, "mask_f_prob")
    # 0/1 noise + the core's stable argsort = kept tokens in index order, as the official id2res sort.
    return removed, len_keep


def _time(**args: Unpack[MaskingArgs]) -> tuple[Tensor, int]:
    """Whole time rows removed at ``mask_ratio``."""
    return _time_and_frequency(**args, mask_f_prob=0.0)


def _frequency(**args: Unpack[MaskingArgs]) -> tuple[Tensor, int]:
    """Whole frequency columns removed at ``mask_ratio``."""
    return _time_and_frequency(**args, mask_t_prob=0.0)


STRATEGIES: dict[str, Callable[..., tuple[Tensor, int]]] = {
    "time_frequency": _time_and_frequency,
    "time": _time,
    "frequency": _frequency,
}
