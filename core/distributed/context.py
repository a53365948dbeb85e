"""One process or many: the rank, world size and device of this process, and the few collectives the
trainer needs.

``torchrun`` (or any launcher) sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE`` above 1 the trainer joins a process group (NCCL on CUDA, gloo on
CPU) and wraps the model in DistributedDataParallel, or shards it with FSDP2 (``train.distributed: fsdp``).
Without them it is a single process, no group.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable, Sequence
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
    "gather_full_state",
    "load_full_state",
    "optim_state_by_index",
    "optim_state_by_name",
    "resolve_device",
    "run_then_teardown",
    "setup",
    "shard_model",
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


# --- FSDP2 (train.distributed: fsdp) ---------------------------------------------------------------------
def shard_model(
    model: torch.nn.Module, blocks: Sequence[torch.nn.Module], device: torch.device, *, reshard_after_forward: bool
) -> None:
    """FSDP2 ``fully_shard`` in place: every encoder and decoder block is one unit (its weights are gathered
    just before it runs and, with ``reshard_after_forward``, freed right after), then the root holds the rest
    (tokenizer, tokens, norms, heads). Parameter names stay the same, so checkpoints keep their keys.

    No ``MixedPrecisionPolicy``: parameters stay fp32 and ``train.precision`` works through the trainer's
    autocast, exactly as under DDP. Autocast keeps LayerNorm, softmax, the norm-pix target and the loss in fp32
    (the official recipe's numerics), where a bf16 parameter policy would also cast each block's input, so the
    residual stream, to bf16; one precision path for both wrappers is also what the DDP-equivalence test
    checks. The price: the all-gathers move fp32 weights, twice the bytes of a bf16 policy.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks:  # the encoder's and decoders' transformer blocks, named by the caller
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)


def gather_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The unsharded model (and optimizer) state of an FSDP2 model, on rank 0's CPU; other ranks get ``{}``.

    Every rank must call it (it gathers). The optimizer state is returned in ``torch.optim``'s own layout
    (:func:`optim_state_by_index`), so the checkpoint is the same file a DDP run writes.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_state, None
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    return model_state, optim_state_by_index(optim_state) if optim_state else {}


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any],
    optim_state: dict[str, Any],
    ctx: DistContext,
) -> None:
    """Rank 0's unsharded state (a DDP or FSDP checkpoint) into every rank's shards, broadcast from rank 0.

    Every rank must call it; only rank 0's ``model_state`` and ``optim_state`` (``torch.optim`` layout) are read.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    named = optim_state_by_name(optim_state, model, optimizer) if ctx.is_main else {}
    set_model_state_dict(model, model_state if ctx.is_main else {}, options=options)
    set_optimizer_state_dict(model, optimizer, named, options=options)


def optim_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state (``torch.distributed.checkpoint``'s layout: ``{"state": {name: ...},
    "param_groups": [{"params": [name, ...]}]}``) -> ``torch.optim``'s layout, parameters numbered 0, 1, ...
    in param-group order exactly as ``Optimizer.state_dict()`` numbers them."""
    index: dict[str, int] = {}
    groups = [
        {**g, "params": [index.setdefault(name, len(index)) for name in g["params"]]} for g in state["param_groups"]
    ]
    return {"state": {index[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def optim_state_by_name(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``torch.optim``'s layout -> the name-keyed one, for ``optimizer`` over ``model``'s parameters (the
    inverse of :func:`optim_state_by_index`). The group sizes must match: a different model is refused."""
    names = {id(p): name for name, p in model.named_parameters()}
    ours = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    saved = [len(g["params"]) for g in state["param_groups"]]
    if saved != [len(g) for g in ours]:
        raise ValueError(
            f"optimizer state has param groups of sizes {saved}, this model's optimizer {[len(g) for g in ours]}"
        )
    name_of = {
        i: name
        for g, names_g in zip(state["param_groups"], ours, strict=True)
        for i, name in zip(g["params"], names_g, strict=True)
    }
    return {
        "state": {name_of[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": names_g} for g, names_g in zip(state["param_groups"], ours, strict=True)],
    }
