"""Optimizer pieces of the MAE recipe: the lr scaling rule, per-iteration schedule, weight-decay groups."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["absolute_lr", "cosine_lr", "param_groups_weight_decay", "step_in_backward"]


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


def step_in_backward(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Run ``optimizer``'s update of each parameter inside backward, as soon as that parameter's gradient is
    complete, then free the gradient (``optim.step_in_backward``): the whole model's gradients never exist at
    once, which saves one model-sized buffer of memory (PyTorch's "optimizer step in backward" recipe).

    The hook calls ``optimizer.step()`` while this parameter is the only one holding a gradient (the others are
    freed or not computed yet), so the update, the lr and weight decay of its group and the state layout are
    exactly those of ``optimizer``: checkpoints are interchangeable with the ordinary step. Only valid with one
    backward per update (no accumulation, no DDP all-reduce, no GradScaler); the caller must not call
    ``optimizer.step()`` itself. Returns a function that removes the hooks."""

    def hook(param: torch.Tensor) -> None:
        optimizer.step()
        param.grad = None

    handles = [p.register_post_accumulate_grad_hook(hook) for p in model.parameters() if p.requires_grad]
    return lambda: [h.remove() for h in handles] and None
