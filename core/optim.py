"""Optimizer pieces of the MAE recipe: the lr scaling rule, per-iteration schedule, weight-decay groups."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["absolute_lr", "cosine_lr", "param_groups_weight_decay"]


def absolute_lr(*, blr: float, effective_batch: int, lr: float | None = None) -> float:
    """``lr = blr * effective_batch / 256`` (reference section 2), unless an absolute ``lr`` is given."""
    return lr if lr is not None else blr * effective_batch / 256


def cosine_lr(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Linear warm-up from 0, then half-cycle cosine to ``min_lr``; ``epoch`` is fractional (per iteration)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups as the official pre-training: no decay for 1-D parameters and biases; everything else,
    including cls_token and mask_token (shape 1x1xD), is decayed. Frozen tensors are not parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
