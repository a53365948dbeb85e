"""The contrastive term of a composite MAE (CAV-MAE, Gong et al., ICLR 2023, section 3.3 and ``cav_mae.py``).

Each part's visible tokens go through the shared encoder *alone* (so one part's representation cannot read the
other's tokens, which would make matching them trivial), are mean-pooled, projected (optionally) and
L2-normalised; matching items of two parts are positives, every other item of the batch a negative:

    logits = a @ b.T / temperature            (N, N), a and b (N, E) unit rows
    loss   = (CE(logits, arange N) + CE(logits.T, arange N)) / 2

CAV-MAE: weight 0.01, temperature 0.05, no projection (the pooled, normalised encoder output). Its released code
scores one direction by default (``bidirect_contrast=False``: the softmax over the audio items of each video);
this term always scores both, as the paper's equation (2) writes it.

Across processes the keys are every rank's items, gathered *with* their gradients
(``torch.distributed.nn.functional.all_gather``), and each rank's loss is its queries' share of the global mean,
so the data-parallel average of the gradients equals one process's gradient on the whole batch. Only in training
mode: an evaluation (the held-out check, run by rank 0 alone) scores its own batch, with no collective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

__all__ = ["ContrastiveTerm", "gather_with_grad", "info_nce"]


class ContrastiveTerm(nn.Module):
    """InfoNCE between the pooled representations of pairs of parts; ``proj_dim`` 0: no projection (CAV-MAE)."""

    def __init__(
        self,
        *,
        parts: Sequence[str],
        embed_dim: int,
        pairs: Sequence[tuple[str, str]],
        weight: float,
        temperature: float,
        proj_dim: int = 0,
        masked: bool = True,
    ) -> None:
        super().__init__()
        self.pairs = [tuple(pair) for pair in pairs]
        self.weight, self.temperature, self.masked = weight, temperature, masked
        self.proj = nn.ModuleDict(
            {name: nn.Linear(embed_dim, proj_dim) if proj_dim else nn.Identity() for name in parts}
        )

    def embed(self, name: str, pooled: Tensor) -> Tensor:
        """pooled: (N, D) a part's mean-pooled encoder output -> (N, E) unit rows."""
        return F.normalize(self.proj[name](pooled.float()), dim=-1)

    def forward(self, reps: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """reps: part -> (N, E) unit rows, present: part -> (N,) bool -> the mean over ``pairs`` of the two-way
        InfoNCE over the items that have both parts (weight not applied)."""
        losses = [
            info_nce(reps[a], reps[b], self.temperature, valid=present[a] & present[b], gather=self.training)
            for a, b in self.pairs
            if a in reps and b in reps
        ]
        if not losses:
            return next(iter(reps.values())).sum() * 0.0
        return torch.stack(losses).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float, *, valid: Tensor | None = None, gather: bool = True) -> Tensor:
    """Two-way InfoNCE of matching rows: a, b (N, E) unit rows of this process -> this process's share of
    ``(CE(a->b) + CE(b->a)) / 2`` averaged over the valid rows of every process (the keys: every process's rows).

    ``valid`` (N,) bool: rows that take part (an item that lost one part to modality dropout does not); invalid
    rows are neither queries nor keys. With W processes each returns ``W x`` (its rows' sum) / (all valid rows),
    so the mean over the processes is the global loss and so is the data-parallel gradient. ``gather=False``: this
    process's rows alone (no collective)."""
    n = a.shape[0]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=a.device)
    spread = gather and _distributed()
    keys_a, keys_b = (gather_with_grad(a), gather_with_grad(b)) if spread else (a, b)  # (W*N, E)
    valid_all = _gather(valid) if spread else valid  # (W*N,)
    world, rank = (dist.get_world_size(), dist.get_rank()) if spread else (1, 0)
    targets = torch.arange(n, device=a.device) + rank * n  # (N,): each row's own item among the keys
    blocked = torch.zeros_like(valid_all, dtype=torch.float32).masked_fill(~valid_all, float("-inf"))  # (W*N,)
    a_to_b = F.cross_entropy(a @ keys_b.T / temperature + blocked, targets, reduction="none")  # (N,)
    b_to_a = F.cross_entropy(b @ keys_a.T / temperature + blocked, targets, reduction="none")  # (N,)
    rows = (a_to_b + b_to_a) / 2
    total_valid = int(valid_all.sum())
    if total_valid == 0:
        return (a.sum() + b.sum()) * 0.0
    # Invalid rows hold inf (their own key is blocked): select, do not multiply.
    return torch.where(valid, rows, torch.zeros_like(rows)).sum() * world / total_valid


def gather_with_grad(x: Tensor) -> Tensor:
    """(N, ...) on each of W processes -> (W*N, ...) in rank order, differentiable (its backward sends each
    process the gradient of its own rows summed over every process's loss); x itself on one process."""
    if not _distributed():
        return x
    return torch.cat(all_gather_with_grad(x), dim=0)


def _gather(x: Tensor) -> Tensor:
    if not _distributed():
        return x
    pieces = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, x.contiguous())
    return torch.cat(pieces, dim=0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
