"""The one training loop of every command (official ``engine_pretrain`` / ``engine_finetune`` semantics).

A :class:`Task` says what a step computes (pre-training's masked loss, a classifier's cross-entropy) and what a
periodic check measures (held-out masked-patch loss and a figure, or accuracy); :class:`Trainer` does the rest,
once for every command: processes (DDP, or FSDP2 when the task asks for it), autocast and the fp16 GradScaler,
gradient accumulation (``no_sync`` between micro-steps), the per-iteration lr (warm-up + half-cosine at
fractional epochs, times each parameter group's ``lr_scale``), the non-finite policy, bad samples counted over
all ranks, metrics (JSON lines + TensorBoard), numbered checkpoints with keep-last-N rotation, exact resume
(inside an epoch too), and SIGTERM = checkpoint at the next step and exit 75.

Read :meth:`Trainer.run` top to bottom: epochs of :meth:`Trainer.train_step`, then :meth:`Trainer.end_epoch`.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anymae.core.build.models import (
    checkpoint_decoder_blocks,
    checkpoint_encoder_blocks,
    compile_blocks,
    transformer_blocks,
)
from anymae.core.config import ConfigError, TrainConfig, config_to_dict
from anymae.core.data.samples import DataError, EpochSampler
from anymae.core.data.shards import ShardStream
from anymae.core.distributed.context import (
    DistContext,
    all_sum,
    barrier,
    broadcast_object,
    gather_full_state,
    load_full_state,
    run_then_teardown,
    setup,
    shard_model,
)
from anymae.core.io.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from anymae.core.train.optim import absolute_lr, cosine_lr
from anymae.core.train.run import (
    MetricsWriter,
    NonFiniteLossError,
    PreemptedError,
    capture_rng,
    new_run_dir,
    on_sigterm,
    restore_rng,
    resume_path,
    rotate_checkpoints,
    run_base,
    writable_dir,
)
from anymae.core.weights.loading import check_state_dict, load_state_dict_checked

__all__ = ["Check", "Progress", "Task", "Trainer", "run_task"]


@dataclass
class Progress:
    """Where a run is: saved in every checkpoint, so a resumed run continues exactly."""

    epoch: int = 0  # the epoch being run
    batch: int = 0  # the next micro-batch of that epoch
    step: int = 0  # optimizer steps taken
    bad_samples: int = 0  # unreadable samples replaced so far, all ranks
    epoch_bad: int = 0  # ... in this epoch
    skipped_steps: int = 0  # steps dropped for a non-finite loss or gradient (on_nonfinite=skip)
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of each micro-batch of this epoch


@dataclass
class Check:
    """The outcome of a task's periodic held-out check."""

    record: dict[str, float]  # metrics row (rank 0; empty elsewhere)
    line: str  # one line for the console
    best: bool = False  # the best result so far: the trainer writes checkpoint-best.pt
    figure: Path | None = None  # a figure file, shown in TensorBoard as an image
    figure_tag: str = "heldout/reconstruction"  # the TensorBoard tag of that image


class Task(ABC):
    """What one command trains. The trainer reads these attributes and calls these methods; the defaults
    here are those of a task without the option. A subclass sets every attribute in its ``__init__``."""

    command: str = "train"  # names the command in messages: pretrain | finetune | linprobe
    checkpoint_format: str = ""  # the "format" of its checkpoints (read back by load_model / load_classifier)
    keeps_last: bool = False  # also write checkpoint-last.pt after every epoch (the file to resume and evaluate)
    final_numbered: bool = True  # the last epoch always writes a numbered checkpoint (pre-training's result)
    fsdp: bool = False  # shard the model with FSDP2 (pre-training under torchrun with train.distributed: fsdp)
    step_in_backward: bool = False  # the optimizer updates inside backward (optim.step_in_backward)
    has_decoder: bool = False  # train.checkpoint_decoder_blocks applies
    views_per_item: int = 1  # items stack S views of one file; each is a sample of the step (lr rule)

    model: nn.Module  # the trained module, on the device, before DDP / FSDP wrapping
    train_set: Dataset

    @abstractmethod
    def loader_dataset(self) -> Dataset:
        """The training set as the loader reads it, keyed ``(epoch, index)``: items are dicts with a ``"bad"``."""

    def collate(self) -> Any:
        """The loader's ``collate_fn`` (None: PyTorch's default)."""
        return None

    def sample_weights(self) -> list[float] | None:
        """One weight per training item for weighted draws (None: a permutation per epoch)."""
        return None

    def epoch_samples(self) -> int | None:
        """Draws per epoch with sample weights (None: the set's size)."""
        return None

    @abstractmethod
    def optimizer(self, base_lr: float) -> torch.optim.Optimizer:
        """The optimizer over the trained parameters at ``base_lr`` (groups may carry an ``lr_scale``)."""

    def train_mode(self, net: nn.Module) -> None:
        """Put the model in training mode at the start of an epoch."""
        net.train()

    @abstractmethod
    def loss(self, net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The loss of one micro-batch (inside autocast) and its number of samples."""

    def step_record(self) -> dict[str, float]:
        """More values for the logged training row, from the last micro-batch on this rank (e.g. each part's
        loss of a composite model)."""
        return {}

    @abstractmethod
    def check(self, trainer: Trainer, epoch: int) -> Check:
        """The periodic held-out check after ``epoch`` (0-based), called on every rank."""

    @abstractmethod
    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds besides the training state: ``format``, ``config`` and task extras."""

    @abstractmethod
    def restore(self, payload: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another kind of run, and take back the task's extras (before the trainer
        loads the model, optimizer and position)."""

    @abstractmethod
    def result(self, trainer: Trainer) -> Any:
        """What the command returns once the run is over (rank 0's view, broadcast where it matters)."""


def run_task(
    make_task: Callable[[DistContext, torch.device], Task],
    cfg: Any,
    *,
    progress: bool = True,
    resume: str | None = None,
) -> Any:
    """Every command's launch: join the process group (under ``torchrun``) and pick ``cfg.train.device``, build the
    task there, run it through the loop from ``resume`` (a checkpoint of this run, or "auto"), then leave the group
    (also on an error) -> the task's result."""
    ctx, device = setup(cfg.train.device)

    def work() -> Any:
        return Trainer(make_task(ctx, device), cfg, ctx=ctx, device=device, progress=progress).run(resume)

    return run_then_teardown(ctx, work)


class Trainer:
    """Runs a :class:`Task` for ``train.epochs`` epochs. ``cfg`` has ``name``, ``train`` and ``optim`` (with at
    least ``blr``, ``lr``, ``min_lr``, ``warmup_epochs``)."""

    def __init__(self, task: Task, cfg: Any, *, ctx: DistContext, device: torch.device, progress: bool = True) -> None:
        train: TrainConfig = cfg.train
        self.task, self.cfg, self.train, self.ctx, self.device = task, cfg, train, ctx, device
        self.show_progress = progress
        if train.malloc_mmap_threshold is not None:
            _set_malloc_mmap_threshold(train.malloc_mmap_threshold)
        if train.checkpoint_decoder_blocks and not task.has_decoder:
            raise ConfigError(f"train.checkpoint_decoder_blocks: {task.command} trains a model without a decoder")
        checkpoint_decoder_blocks(task.model, train.checkpoint_decoder_blocks)
        checkpoint_encoder_blocks(task.model, train.checkpoint_encoder_blocks)
        if train.compile:
            compile_blocks(task.model)  # in place: parameter names and checkpoints are unchanged
        self.model = task.model
        self.net: nn.Module = self.model
        if task.fsdp:  # in place: self.net is self.model, its parameters now sharded DTensors
            shard_model(self.model, transformer_blocks(self.model), device,
                        reshard_after_forward=train.fsdp_reshard_after_forward)  # fmt: skip
        elif ctx.enabled:
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        dataset = task.loader_dataset()
        if isinstance(task.train_set, ShardStream):
            # Shards are read as a stream: each rank x worker its own samples, in an order seeded per epoch.
            if task.sample_weights() is not None:
                raise ConfigError(f"{task.command}: weighted (balanced) sampling needs a folder; shards are streamed")
            self.sampler: EpochSampler | ShardStream = task.train_set.bind(
                rank=ctx.rank, world_size=ctx.world_size, workers=train.num_workers, batch_size=train.batch_size,
                seed=train.seed, finish=dataset.finish,  # type: ignore[attr-defined]
            )  # fmt: skip
            dataset, sampler = task.train_set, None
        else:
            self.sampler = EpochSampler(
                len(task.train_set), batch_size=train.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                seed=train.seed, weights=task.sample_weights(), num_samples=task.epoch_samples(),
            )  # fmt: skip
            sampler = self.sampler
        self.loader = DataLoader(
            dataset,
            batch_size=train.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=train.num_workers,
            pin_memory=train.pin_memory and device.type == "cuda",
            persistent_workers=train.persistent_workers and train.num_workers > 0,
            prefetch_factor=train.prefetch_factor if train.num_workers > 0 else None,
            collate_fn=task.collate(),
            # Its own generator: a new iterator (each epoch, or at a resume inside one) draws a worker base seed,
            # which must not move the global generator that masking, drop path and mixup use.
            generator=torch.Generator().manual_seed(train.seed),
        )
        # Every view is a sample of the step: the lr rule counts views.
        self.effective_batch = train.batch_size * task.views_per_item * train.accum_iter * ctx.world_size
        self.base_lr = absolute_lr(blr=cfg.optim.blr, effective_batch=self.effective_batch, lr=cfg.optim.lr)
        self.optimizer = task.optimizer(self.base_lr)
        self.scaler = _grad_scaler(device, fsdp=task.fsdp) if train.precision == "fp16" else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        self.state = Progress()
        self.run_dir = Path()
        self.metrics = MetricsWriter(self.run_dir, enabled=False)
        self.checkpoint: Path | None = None  # the newest checkpoint written or resumed from
        self.preempt = threading.Event()  # set by SIGTERM
        self.preempt_agreed = False  # some rank got SIGTERM: every rank stops at the same step
        self.window_ok = True  # no non-finite loss in this accumulation window so far
        self.consecutive_skips = 0
        self.lr = 0.0
        self.epoch_loss = float("nan")  # mean loss of the last finished epoch
        self.last_check: Check | None = None

    # --- the run -----------------------------------------------------------------------------------------
    def run(self, resume: str | None = None) -> Any:
        """Train from scratch, or from ``resume`` (a checkpoint path, or "auto": the newest of the run)."""
        checkpoint = resume_path(resume, self.cfg, pattern="checkpoint-*.pt") if resume else None
        first_start = resume == "auto" and checkpoint is None
        self.run_dir = self._open_run_dir(checkpoint, first_start=first_start)
        if checkpoint is not None:
            self._restore(checkpoint)
        # A first start under "auto" may follow a start killed before its first checkpoint: its rows are dropped
        # as a resume from step 0 drops them.
        resume_step = self.state.step if checkpoint is not None or first_start else None
        self.metrics = MetricsWriter(self.run_dir, enabled=self.ctx.is_main, resume_step=resume_step,
                                     loggers=self.train.loggers, config=config_to_dict(self.cfg))  # fmt: skip
        try:
            with on_sigterm(self.preempt):
                for epoch in range(self.state.epoch, self.train.epochs):
                    self.run_epoch(epoch)
                    self.end_epoch(epoch)
            if self.last_check is None:  # nothing left to train (a finished run resumed): check it once
                self._check(max(self.state.epoch - 1, 0))
        finally:
            self.metrics.close()
        if self.checkpoint is None:
            raise CheckpointError(f"no checkpoint was written to {self.run_dir}")
        barrier(self.ctx)
        return self.task.result(self)

    def run_epoch(self, epoch: int) -> None:
        train, state = self.train, self.state
        self.sampler.set_epoch(epoch, state.batch)  # state.batch > 0 only when resumed inside this epoch
        self.task.train_mode(self.net)
        per_epoch = self.sampler.batches_per_epoch
        started, seen = time.perf_counter(), 0
        shown = self.show_progress and self.ctx.is_main
        bar = tqdm(self.loader, desc=f"{self.task.command} epoch {epoch + 1}/{train.epochs}", initial=state.batch,
                   total=per_epoch, disable=not shown, dynamic_ncols=True)  # fmt: skip
        for it, batch in enumerate(bar, start=state.batch):
            last = (it + 1) % train.accum_iter == 0 or it + 1 == per_epoch
            if it % train.accum_iter == 0:  # the first micro-step of a window sets its lr
                self._set_lr(epoch + it / per_epoch)
            seen += self.train_step(batch, it, sync=last)
            state.batch = it + 1
            if not last:
                continue
            stepped, grad_norm = self._optimizer_step(it)
            rate = seen / (time.perf_counter() - started)
            if stepped and state.epoch_losses and state.step % train.log_every_steps == 0:
                self.metrics.log(step=state.step, epoch=round(epoch + it / per_epoch, 6), loss=state.epoch_losses[-1],
                                 lr=self.lr, grad_norm=grad_norm, samples_per_s=round(rate, 2),
                                 bad_samples=state.bad_samples, **self.task.step_record())  # fmt: skip
            bar.set_postfix(loss=f"{state.epoch_losses[-1] if state.epoch_losses else float('nan'):.4f}",
                            lr=f"{self.lr:.2e}", samples_s=f"{rate:.1f}")  # fmt: skip
            if it + 1 < per_epoch:
                self._inside_epoch(epoch, it, per_epoch, stepped)

    def train_step(self, batch: dict[str, Any], it: int, *, sync: bool) -> int:
        """One micro-step: forward, one collective (summed loss, non-finite ranks, bad samples, SIGTERM), and
        backward unless the loss is non-finite anywhere. Returns the samples it saw on all ranks."""
        with self.autocast:
            loss, samples = self.task.loss(self.net, batch)
        local = loss.detach().float().item()
        finite = math.isfinite(local)
        loss_sum, nonfinite, bad, preempt = all_sum(
            [local if finite else 0.0, float(not finite), float(batch["bad"].sum()), float(self.preempt.is_set())],
            self.ctx,
            self.device,
        )
        self._count_bad(int(bad))
        self.preempt_agreed = self.preempt_agreed or preempt > 0
        if nonfinite:
            self.window_ok = False
            self._nonfinite(f"loss is {local if not finite else 'non-finite on another rank'}", it)
        else:
            with self._no_grad_sync() if self.ctx.enabled and not sync else nullcontext():
                scaled = loss / self.train.accum_iter
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            self.state.epoch_losses.append(loss_sum / self.ctx.world_size)
        return samples * self.ctx.world_size

    def end_epoch(self, epoch: int) -> None:
        """The epoch's metrics row, the periodic check (before the checkpoint, so the checkpoint's RNG state
        includes whatever the check drew), the epoch's checkpoints, and a stop if SIGTERM arrived."""
        train, state, task = self.train, self.state, self.task
        self.epoch_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan")
        state.epoch, state.batch = epoch + 1, 0
        self.metrics.log(step=state.step, epoch=epoch + 1, epoch_loss=self.epoch_loss, bad_samples=state.bad_samples,
                         epoch_bad_samples=state.epoch_bad, skipped_steps=state.skipped_steps)  # fmt: skip
        state.epoch_bad, state.epoch_losses = 0, []
        final = epoch + 1 == train.epochs
        if (epoch + 1) % train.eval_every_epochs == 0 or final:
            self._check(epoch)
        elif self.ctx.is_main:
            print(f"epoch {epoch + 1}: train loss {self.epoch_loss:.4f}", flush=True)
        saved = False
        if (epoch + 1) % train.save_every_epochs == 0 or (final and task.final_numbered):
            self.save(f"checkpoint-{state.epoch:04d}.pt")
            saved = True
        if task.keeps_last:
            self.save("checkpoint-last.pt")
            saved = True
        if self.preempt_agreed and not final:
            if not saved:
                self.save(f"checkpoint-{state.epoch:04d}.pt")
            raise PreemptedError(
                f"SIGTERM: stopped after epoch {epoch + 1} and wrote {self.checkpoint}; continue with --resume auto",
                self.checkpoint,
            )

    # --- steps -------------------------------------------------------------------------------------------
    def _set_lr(self, at: float) -> None:
        """``at``: the fractional epoch of this window's first micro-step (the official per-iteration rule)."""
        optim = self.cfg.optim
        self.lr = cosine_lr(at, lr=self.base_lr, min_lr=optim.min_lr, warmup_epochs=optim.warmup_epochs,
                            epochs=self.train.epochs)  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)  # layer-wise decay sets lr_scale
        self.window_ok = True

    def _optimizer_step(self, it: int) -> tuple[bool, float | None]:
        """The optimizer step at the end of an accumulation window: whether it was taken, and the gradient norm."""
        state, train = self.state, self.train
        grad_norm, ok = None, self.window_ok
        in_backward = self.task.step_in_backward  # the update already happened; no gradients are left
        if ok and not in_backward:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            # FSDP: the gradients are sharded DTensors and their norm is reduced over the ranks (a collective).
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            if not math.isfinite(grad_norm) and self.scaler is None:
                # DDP gradients are identical on every rank after the all-reduce, the FSDP norm is global: every
                # rank agrees here. (fp16: the GradScaler skips such steps itself and lowers its scale.)
                ok = False
                self._nonfinite(f"gradient norm is {grad_norm}", it)
        if ok:
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif not in_backward:
                self.optimizer.step()
            state.step += 1
            self.consecutive_skips = 0
        else:
            state.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= train.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"{self.consecutive_skips} steps in a row had a non-finite loss or gradient "
                    f"(train.max_consecutive_skips={train.max_consecutive_skips}) at step {state.step}; "
                    f"last good checkpoint: {self.checkpoint or 'none yet'}"
                )
        self.optimizer.zero_grad(set_to_none=True)
        return ok, None if grad_norm is None else round(grad_norm, 6)

    def _inside_epoch(self, epoch: int, it: int, per_epoch: int, stepped: bool) -> None:
        """After a step inside an epoch: stop on SIGTERM with the position saved, or a step checkpoint."""
        state = self.state
        if self.preempt_agreed:
            path = self.save("checkpoint-last.pt" if self.task.keeps_last else f"checkpoint-step{state.step:08d}.pt")
            raise PreemptedError(
                f"SIGTERM: stopped at step {state.step} (epoch {epoch + 1}, batch {it + 1}/{per_epoch}) and wrote "
                f"{path}; continue with --resume auto",
                path,
            )
        if stepped and self.train.save_every_steps and state.step % self.train.save_every_steps == 0:
            self.save(f"checkpoint-step{state.step:08d}.pt")

    def _nonfinite(self, what: str, it: int) -> None:
        state = self.state
        where = f"step {state.step} (epoch {state.epoch + 1}, batch {it + 1})"
        if self.train.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"{self.task.command}: {what} at {where}; last good checkpoint: {self.checkpoint or 'none yet'} "
                f"(train.on_nonfinite=skip drops such steps instead)"
            )
        if self.ctx.is_main:
            warnings.warn(f"{what} at {where}: skipping this step on every rank", RuntimeWarning, stacklevel=2)

    def _count_bad(self, bad: int) -> None:
        state = self.state
        state.bad_samples += bad
        state.epoch_bad += bad
        total = len(self.task.train_set)
        if state.epoch_bad > self.train.max_bad_fraction * total:
            raise DataError(
                f"{state.epoch_bad} of {total} training samples were unreadable in epoch {state.epoch + 1}, more "
                f"than train.max_bad_fraction={self.train.max_bad_fraction} allows (the warnings above name the files)"
            )

    def _check(self, epoch: int) -> None:
        check = self.task.check(self, epoch)
        self.last_check = check
        if not self.ctx.is_main:
            return
        if check.record:
            self.metrics.log(step=self.state.step, epoch=epoch + 1, **check.record)
        if check.figure is not None:
            self.metrics.image(check.figure_tag, check.figure, step=self.state.step)
        print(f"epoch {epoch + 1}: {check.line}", flush=True)
        if check.best:
            self.save("checkpoint-best.pt", collective=False)

    # --- checkpoints -------------------------------------------------------------------------------------
    def save(self, name: str, *, collective: bool = True) -> Path:
        """Rank 0 writes ``name`` atomically (every rank takes part in an FSDP gather; ``collective=False``: rank
        0 alone, never under FSDP); every rank learns the path. Numbered names are rotated (train.keep_last)."""
        path = self.run_dir / name
        model_state, optimizer_state = self._full_state()
        if self.ctx.is_main:
            payload = {
                **self.task.payload(),
                "model": model_state,
                "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "progress": config_to_dict(self.state),
                "world_size": self.ctx.world_size,
                "shard_slots": self._shard_slots(),
                "rng": capture_rng(),
                "run_config": config_to_dict(self.cfg),
            }
            try:
                write_checkpoint(payload, path)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint "
                    f"{self.checkpoint or '(none yet)'} is intact"
                ) from None
            rotate_checkpoints(self.run_dir, keep=self.train.keep_last, newest=path)
        if collective:
            barrier(self.ctx)
        if name != "checkpoint-best.pt":
            self.checkpoint = path
        return path

    def _restore(self, path: Path) -> None:
        payload = read_checkpoint(path)
        if (
            not isinstance(payload, dict)
            or payload.get("format") != self.task.checkpoint_format
            or ("optimizer" not in payload)
        ):
            raise CheckpointError(
                f"--resume {path}: not an anymae {self.task.command} training checkpoint "
                f"(format={self.task.checkpoint_format!r} with optimizer state)"
            )
        self.task.restore(payload, path)
        if self.task.fsdp:  # every rank read the file: every rank refuses a mismatch alike, before any collective
            check_state_dict(self.model.state_dict(), payload["model"], source=str(path), strict=True)
            load_full_state(self.model, self.optimizer, payload["model"], payload["optimizer"], self.ctx)
        else:
            load_state_dict_checked(self.model, payload["model"], source=str(path), strict=True)
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.state = _saved_progress(payload)
        self._check_shard_slots(payload.get("shard_slots"), path)
        saved_world = payload.get("world_size", 1)
        if self.state.batch and saved_world != self.ctx.world_size:
            raise CheckpointError(
                f"--resume {path}: saved inside an epoch by {saved_world} process(es); resume it with the same "
                f"number of processes (now {self.ctx.world_size}) or from an epoch-end checkpoint"
            )
        restore_rng(payload["rng"])
        self.checkpoint = path
        if self.ctx.is_main:
            where = f"epoch {self.state.epoch + 1}" + (f", batch {self.state.batch + 1}" if self.state.batch else "")
            print(f"resuming {self.task.command} from {path} (step {self.state.step}): {where} of "
                  f"{self.train.epochs} epochs", flush=True)  # fmt: skip

    def _shard_slots(self) -> list[int] | None:
        """``[ranks, workers]`` reading the training shards (None: the training set is not a shard stream)."""
        if not isinstance(self.sampler, ShardStream):
            return None
        return [self.sampler.world_size, self.sampler.workers]

    def _check_shard_slots(self, saved: list[int] | None, path: Path) -> None:
        """Shards are dealt to ranks x workers and each slot's order is seeded by its place: inside an epoch only
        the same ranks and workers read the samples the saved run had left (others would read some twice and miss
        some), so a different count is refused; at an epoch's end it is said, as the later epochs' orders change."""
        ours = self._shard_slots()
        if saved is None or ours is None or list(saved) == ours:
            return
        theirs = f"{saved[0]} rank(s) x {saved[1]} worker(s)"
        now = f"{ours[0]} rank(s) x {ours[1]} worker(s)"
        if self.state.batch:
            raise CheckpointError(
                f"--resume {path}: saved inside an epoch by a run reading shards on {theirs}; this run has {now}. "
                f"Exact resume from shards needs the same ranks and workers (train.num_workers={saved[1]} on "
                f"{saved[0]} process(es)), or resume from an epoch-end checkpoint"
            )
        if self.ctx.is_main:
            print(f"--resume {path}: written by a run reading shards on {theirs}, resumed on {now}: every sample is "
                  "still read once per epoch, in another order than that run's", flush=True)  # fmt: skip

    def _open_run_dir(self, checkpoint: Path | None, *, first_start: bool = False) -> Path:
        """The resumed run's folder; for ``--resume auto`` with no checkpoint yet (``first_start``) runs/<name>,
        the folder the next ``--resume auto`` looks in; else a new runs/<name>[-N]. The resolved config is saved
        as plain data."""
        ctx = self.ctx
        if checkpoint is not None:
            run_dir: Path | None = checkpoint.parent
        elif not ctx.is_main:
            run_dir = None
        elif first_start:
            run_dir = writable_dir(run_base(self.cfg))
            print(f"--resume auto: no checkpoint in {run_dir} yet; starting a new {self.task.command} run there",
                  flush=True)  # fmt: skip
        else:
            run_dir = new_run_dir(self.cfg)
        run_dir = Path(broadcast_object(str(run_dir), ctx))
        if ctx.is_main:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        return run_dir

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The unsharded model and optimizer state dicts, the same layout under DDP and FSDP (complete on rank 0)."""
        if self.task.fsdp:
            return gather_full_state(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()

    def copy_last_figure(self, path: Path) -> Path | None:
        """The last check's figure also under ``path`` (e.g. reconstruction.png, the run's final figure)."""
        figure = self.last_check.figure if self.last_check is not None else None
        if figure is None or not self.ctx.is_main:
            return figure
        if figure != path:
            shutil.copyfile(figure, path)
        return path

    @contextmanager
    def _no_grad_sync(self) -> Iterator[None]:
        """A non-final micro-step of an accumulation window: DDP's ``no_sync``; FSDP2 keeps the unsharded
        gradients of every block until the last micro-step reduce-scatters their sum (memory: one fp32 copy of
        the full gradients, for fewer collectives)."""
        if not self.task.fsdp:
            with self.net.no_sync():
                yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)


def _saved_progress(payload: dict[str, Any]) -> Progress:
    """The position of a checkpoint, also of the earlier layouts (pre-training format 1: saved at the end of
    epoch ``epoch``; classifiers before the one loop: ``epoch`` done, ``batch`` into the next)."""
    if "progress" in payload:
        return Progress(**payload["progress"])
    if payload.get("format") == "anymae":
        return Progress(epoch=payload["epoch"] + 1, step=payload["step"])
    return Progress(epoch=payload["epoch"], batch=payload.get("batch", 0), epoch_losses=payload.get("epoch_losses", []))


def _grad_scaler(device: torch.device, *, fsdp: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler; FSDP's ranks hold different gradient shards, so its inf/NaN check must be all-reduced
    (``ShardedGradScaler``) or the ranks could disagree on skipping a step."""
    if fsdp:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def _set_malloc_mmap_threshold(nbytes: int) -> None:
    """glibc ``mallopt(M_MMAP_THRESHOLD, nbytes)``: freed blocks above ``nbytes`` go back to the system at once
    instead of being kept for reuse, so a CPU run's resident memory follows its live tensors (measured in
    benchmarks/RESULTS.md). A warning where there is no glibc."""
    try:
        ok = ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD = -3 in <malloc.h>
    except (OSError, AttributeError):
        ok = 0
    if not ok:
        warnings.warn("train.malloc_mmap_threshold needs glibc (Linux); ignored", RuntimeWarning, stacklevel=2)
