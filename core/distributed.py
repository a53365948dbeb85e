"""One process or many: the rank, world size and device of this process, and the few collectives the
trainer needs.

``torchrun`` (or any launcher) sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE`` above 1 the trainer joins a process group (NCCL on CUDA, gloo on
CPU) and wraps the model in DistributedDataParallel. Without them it is a single process, no group.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = [
    "DistContext",
    "all_sum",
    "barrier",
    "broadcast_object",
    "resolve_device",
    "run_then_teardown",
    "setup",
    "teardown",
]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the group (and so destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; ``auto`` and ``cuda`` pick GPU ``LOCAL_RANK`` under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup(device_name: str, *, timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Read the launcher's environment, pick this process's device and join the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistContext(), device
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank), device
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set: launch with torchrun")
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    return DistContext(rank, world, local_rank, owns_group=True), device


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def run_then_teardown(ctx: DistContext, work: Callable[[], T]) -> T:
    """``work()``, then leave the process group, having freed everything ``work`` built first.

    A DDP model (and the autograd graph of a last loss, which holds DDP's reducer) freed after its process
    group is destroyed can hang the process. When ``work`` raises, the unwound frames would keep them alive, so
    their locals are dropped (the traceback itself stays) and collected before the group goes.
    """
    try:
        return work()
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        gc.collect()
        teardown(ctx)


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few numbers, in one collective (the values themselves alone)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
