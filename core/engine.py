"""The pre-training loop shared by every modality (official ``engine_pretrain`` semantics), on one
process or many (``torchrun``: DistributedDataParallel, or FSDP2 ``fully_shard`` with ``train.distributed: fsdp``).

Per-iteration lr (warm-up + half-cosine at fractional epochs), lr scaled by the effective batch
(per-process batch x accumulation x processes), gradient accumulation (``no_sync`` between micro-steps),
bf16 autocast or fp16 with a GradScaler, atomic checkpoints at epoch ends and every N steps with
keep-last-N rotation, exact resume (inside an epoch too), SIGTERM = checkpoint at the next step and exit,
a non-finite loss or gradient either stops every rank or skips that step everywhere, bad samples counted
over all ranks, JSON-lines metrics, and a held-out masked-patch loss next to the trivial baseline.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .build import build_model, checkpoint_decoder_blocks, checkpoint_encoder_blocks, compile_blocks
from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .config import Config, ConfigError, config_to_dict
from .data import DataError, EpochSampler, SafeDataset
from .distributed import (
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
from .loading import CHECKPOINT_FORMAT, check_state_dict, load_state_dict_checked
from .loss import masked_mse, patch_mean_baseline
from .masking import SampleMasker, sample_mask
from .model import MaskedAutoencoder
from .optim import absolute_lr, cosine_lr, param_groups_weight_decay, step_in_backward
from .run import (
    NonFiniteLossError,
    PreemptedError,
    capture_rng,
    new_run_dir,
    on_sigterm,
    restore_rng,
    resume_path,
    rotate_checkpoints,
    seed_everything,
)

__all__ = [
    "NonFiniteLossError",
    "PreemptedError",
    "PretrainResult",
    "capture_rng",
    "evaluate_heldout",
    "new_run_dir",
    "on_sigterm",
    "pretrain",
    "restore_rng",
    "resume_path",
    "seed_everything",
]


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    train_loss: float  # mean loss of the last epoch
    heldout_loss: float | None  # masked-patch loss on held-out data, fixed masks
    baseline_loss: float | None  # the same for predicting each patch's own mean
    figure: Path | None
    metrics: Path


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


def pretrain(cfg: Config, *, resume: str | None = None, registry: Any = None, progress: bool = True) -> PretrainResult:
    """Pre-train ``cfg`` on its modality's data; ``resume`` is a checkpoint path or ``"auto"`` (newest in the run).

    Under ``torchrun`` every process calls this; rank 0 writes the run folder, checkpoints and metrics.
    """
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    ctx, device = setup(cfg.train.device)
    return run_then_teardown(ctx, lambda: _Trainer(cfg, registry, ctx, device, progress=progress).run(resume))


class _Trainer:
    def __init__(self, cfg: Config, registry: Any, ctx: DistContext, device: torch.device, *, progress: bool) -> None:
        self.cfg, self.ctx, self.device, self.show_progress = cfg, ctx, device, progress
        self.registry = registry
        train = cfg.train
        self.fsdp = _use_fsdp(cfg, ctx)
        _check_step_in_backward(cfg, ctx)
        self.modality = registry.modality(cfg.model.modality)
        # Everything that can fail on the user's inputs fails here, before a model is built.
        self.train_set = self.modality.build_dataset(cfg.data, cfg.model.tokenizer, split="train")
        self.heldout_set = self.modality.build_dataset(cfg.data, cfg.model.tokenizer, split="heldout")
        self.sampler = EpochSampler(
            len(self.train_set), batch_size=train.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=train.seed
        )
        seed_everything(train.seed)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if train.malloc_mmap_threshold is not None:
            _set_malloc_mmap_threshold(train.malloc_mmap_threshold)
        self.model = build_model(cfg.model, registry=registry).to(device)
        checkpoint_decoder_blocks(self.model, train.checkpoint_decoder_blocks)
        checkpoint_encoder_blocks(self.model, train.checkpoint_encoder_blocks)
        if train.compile:
            compile_blocks(self.model)  # in place: parameter names and checkpoints are unchanged
        self.net: torch.nn.Module = self.model
        if self.fsdp:  # in place: self.net is self.model, its parameters now sharded DTensors
            shard_model(self.model, device, reshard_after_forward=train.fsdp_reshard_after_forward)
        elif ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        masker = SampleMasker(self.model.masking, self.model.tokenizer.grid, self.model.mask_ratio)
        # Items may stack S views of one file (VideoMAE's repeated sampling): S masks, flattened per step.
        self.views_per_item = int(getattr(self.train_set, "samples_per_item", 1))
        # Optional end of the input pipeline on the device (e.g. images with data.decode=gpu): its collate runs
        # in the workers, the transform itself in the loop below.
        self.device_transform = self.modality.device_transform(cfg.data, cfg.model.tokenizer, device=device)
        self.loader = DataLoader(
            SafeDataset(self.train_set, seed=train.seed, mask_fn=masker, masks_per_item=self.views_per_item),
            batch_size=train.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=train.num_workers,
            pin_memory=train.pin_memory and device.type == "cuda",
            persistent_workers=train.persistent_workers and train.num_workers > 0,
            prefetch_factor=train.prefetch_factor if train.num_workers > 0 else None,
            collate_fn=self.device_transform.collate if self.device_transform is not None else None,
        )
        # Every view is a sample of the step: the lr rule counts views.
        self.effective_batch = train.batch_size * self.views_per_item * train.accum_iter * ctx.world_size
        self.base_lr = absolute_lr(blr=cfg.optim.blr, effective_batch=self.effective_batch, lr=cfg.optim.lr)
        self.optimizer = torch.optim.AdamW(
            param_groups_weight_decay(self.model, cfg.optim.weight_decay),
            lr=self.base_lr,
            betas=cfg.optim.betas,
            fused=cfg.optim.fused or None,
        )
        if cfg.optim.step_in_backward:  # updates happen inside backward; _step only counts the step
            step_in_backward(self.model, self.optimizer)
        self.scaler = _grad_scaler(device, fsdp=self.fsdp) if train.precision == "fp16" else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        self.state = Progress()
        self.checkpoint: Path | None = None
        self.preempt = threading.Event()

    # --- the run -------------------------------------------------------------------------------------
    def run(self, resume: str | None) -> PretrainResult:
        cfg, train, ctx = self.cfg, self.cfg.train, self.ctx
        checkpoint = resume_path(resume, cfg, pattern="checkpoint-*.pt") if resume else None
        run_dir = checkpoint.parent if checkpoint else (new_run_dir(cfg) if ctx.is_main else None)
        self.run_dir = Path(broadcast_object(str(run_dir), ctx))
        if ctx.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if checkpoint is not None:
            self._restore(checkpoint)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        with self._metrics() as self.metrics, on_sigterm(self.preempt):
            for epoch in range(self.state.epoch, train.epochs):
                self._run_epoch(epoch)
            result = self._finish()
        barrier(ctx)
        return result

    def _run_epoch(self, epoch: int) -> None:
        cfg, train, state = self.cfg, self.cfg.train, self.state
        self.sampler.set_epoch(epoch, state.batch)  # state.batch > 0 only when resumed inside this epoch
        self.net.train()
        per_epoch = self.sampler.batches_per_epoch
        started, seen = time.perf_counter(), 0
        window_ok = True  # no non-finite loss in this accumulation window so far
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{train.epochs}",
            disable=not (self.show_progress and self.ctx.is_main),
            dynamic_ncols=True,
            initial=state.batch,
            total=per_epoch,
        )
        for it, batch in enumerate(bar, start=state.batch):
            first, last = it % train.accum_iter == 0, (it + 1) % train.accum_iter == 0 or it + 1 == per_epoch
            if first:
                at = epoch + it / per_epoch  # the fractional epoch of this step's lr (logged with it)
                lr = cosine_lr(
                    at,
                    lr=self.base_lr,
                    min_lr=cfg.optim.min_lr,
                    warmup_epochs=cfg.optim.warmup_epochs,
                    epochs=train.epochs,
                )
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                window_ok = True
            if self.device_transform is not None:  # may mark more bad samples in batch["bad"], counted below
                x = self.device_transform(batch)
            else:
                x = batch["input"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            if self.views_per_item > 1:  # (N, S, ...) -> (N*S, ...)
                x, mask = x.flatten(0, 1), mask.flatten(0, 1)
            with self.autocast:
                loss = self.net(x, mask=mask)[0]
            # One collective per micro-step: summed loss, non-finite ranks, bad samples, preemption requests.
            local = loss.detach().float().item()
            finite = math.isfinite(local)
            loss_sum, nonfinite, bad, preempt = all_sum(
                [local if finite else 0.0, float(not finite), float(batch["bad"].sum()), float(self.preempt.is_set())],
                self.ctx,
                self.device,
            )
            self._count_bad(int(bad))
            self.preempt_agreed = preempt > 0
            if nonfinite:
                window_ok = False
                self._nonfinite(f"loss is {local if not finite else 'non-finite on another rank'}", it)
            else:
                sync = self.ctx.enabled and not last
                with self._no_grad_sync() if sync else nullcontext():
                    scaled = loss / train.accum_iter
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                state.epoch_losses.append(loss_sum / self.ctx.world_size)
            state.batch = it + 1
            seen += x.shape[0] * self.ctx.world_size
            if not last:
                continue
            grad_norm = self._step(window_ok, it)
            rate = seen / (time.perf_counter() - started)
            if state.epoch_losses and (state.step % train.log_every_steps == 0):
                self._log(
                    step=state.step,
                    epoch=round(at, 6),
                    loss=state.epoch_losses[-1],
                    lr=lr,
                    grad_norm=grad_norm,
                    samples_per_s=round(rate, 2),
                    bad_samples=state.bad_samples,
                )
            bar.set_postfix(loss=f"{state.epoch_losses[-1] if state.epoch_losses else float('nan'):.4f}",
                            lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")  # fmt: skip
            end_of_epoch = it + 1 == per_epoch
            if preempt and not end_of_epoch:
                path = self._save(mid_epoch=True)
                raise PreemptedError(
                    f"SIGTERM: stopped at step {state.step} (epoch {epoch + 1}, batch {it + 1}/{per_epoch}) and wrote "
                    f"{path}; continue with --resume auto",
                    path,
                )
            if train.save_every_steps and state.step % train.save_every_steps == 0 and not end_of_epoch:
                self._save(mid_epoch=True)
        epoch_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan")
        state.epoch, state.batch = epoch + 1, 0
        self.epoch_loss = epoch_loss
        self._log(step=state.step, epoch=epoch + 1, epoch_loss=epoch_loss, bad_samples=state.bad_samples,
                  epoch_bad_samples=state.epoch_bad, skipped_steps=state.skipped_steps)  # fmt: skip
        state.epoch_bad, state.epoch_losses = 0, []
        if (epoch + 1) % train.save_every_epochs == 0 or epoch + 1 == train.epochs:
            self._save(mid_epoch=False)
        if getattr(self, "preempt_agreed", False) and epoch + 1 < train.epochs:
            if (epoch + 1) % train.save_every_epochs:
                self._save(mid_epoch=False)
            raise PreemptedError(
                f"SIGTERM: stopped after epoch {epoch + 1} and wrote {self.checkpoint}; continue with --resume auto",
                self.checkpoint,
            )

    def _step(self, window_ok: bool, it: int) -> float | None:
        """The optimizer step at the end of an accumulation window; returns the gradient norm."""
        state, train = self.state, self.cfg.train
        grad_norm = None
        in_backward = self.cfg.optim.step_in_backward  # the update already happened; no gradients are left
        if window_ok and not in_backward:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            # FSDP: the gradients are sharded DTensors and their norm is reduced over the ranks (a collective).
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            if not math.isfinite(grad_norm) and self.scaler is None:
                # DDP gradients are identical on every rank after the all-reduce, the FSDP norm is global: every
                # rank agrees here.
                window_ok = False
                self._nonfinite(f"gradient norm is {grad_norm}", it)
        if window_ok:
            if self.scaler:
                self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN gradients (fp16 overflow)
                self.scaler.update()
            elif not in_backward:
                self.optimizer.step()
            state.step += 1
            self.consecutive_skips = 0
        else:
            state.skipped_steps += 1
            self.consecutive_skips = getattr(self, "consecutive_skips", 0) + 1
            if self.consecutive_skips >= train.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"{self.consecutive_skips} steps in a row had a non-finite loss or gradient "
                    f"(train.max_consecutive_skips={train.max_consecutive_skips}) at step {state.step}; "
                    f"last good checkpoint: {self.checkpoint or 'none yet'}"
                )
        self.optimizer.zero_grad(set_to_none=True)
        return None if grad_norm is None else round(grad_norm, 6)

    def _nonfinite(self, what: str, it: int) -> None:
        state = self.state
        where = f"step {state.step} (epoch {state.epoch + 1}, batch {it + 1})"
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"{what} at {where}; last good checkpoint: {self.checkpoint or 'none yet'} "
                f"(train.on_nonfinite=skip drops such steps instead)"
            )
        if self.ctx.is_main:
            warnings.warn(f"{what} at {where}: skipping this step on every rank", RuntimeWarning, stacklevel=2)

    def _count_bad(self, bad: int) -> None:
        state, train = self.state, self.cfg.train
        state.bad_samples += bad
        state.epoch_bad += bad
        total = len(self.train_set)
        if state.epoch_bad > train.max_bad_fraction * total:
            raise DataError(
                f"{state.epoch_bad} of {total} training samples were unreadable in epoch {state.epoch + 1}, more "
                f"than train.max_bad_fraction={train.max_bad_fraction} allows (the warnings above name the files)"
            )

    def _finish(self) -> PretrainResult:
        cfg, state = self.cfg, self.state
        heldout_loss = baseline = figure = None
        model = self._plain_model() if self.heldout_set is not None else None
        if self.ctx.is_main and self.heldout_set is not None:
            heldout_loss, baseline, figure = evaluate_heldout(
                model,
                self.modality,
                cfg,
                self.heldout_set,
                device=self.device,
                path=self.run_dir / "reconstruction.png",
            )
            self._log(step=state.step, heldout_loss=heldout_loss, baseline_loss=baseline)
        if self.checkpoint is None:
            raise CheckpointError(f"no checkpoint was written to {self.run_dir}")
        train_loss = getattr(self, "epoch_loss", float("nan"))
        return PretrainResult(
            self.run_dir, self.checkpoint, train_loss, heldout_loss, baseline, figure, self.metrics_path
        )

    # --- checkpoints and metrics ---------------------------------------------------------------------------
    def _save(self, *, mid_epoch: bool) -> Path:
        """Rank 0 writes atomically; every rank learns the path. Mid-epoch names carry the step."""
        state, train = self.state, self.cfg.train
        name = f"checkpoint-step{state.step:08d}.pt" if mid_epoch else f"checkpoint-{state.epoch:04d}.pt"
        path = self.run_dir / name
        model_state, optimizer_state = self._full_state()  # FSDP: every rank takes part in the gather
        if self.ctx.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "format_version": 2,
                "config": config_to_dict(self.cfg),
                "model": model_state,
                "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "progress": config_to_dict(state),
                "world_size": self.ctx.world_size,
                "rng": capture_rng(),
            }
            try:
                write_checkpoint(payload, path)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint "
                    f"{self.checkpoint or '(none yet)'} is intact"
                ) from None
            rotate_checkpoints(self.run_dir, keep=train.keep_last, newest=path)
        barrier(self.ctx)
        self.checkpoint = path
        return path

    def _restore(self, path: Path) -> None:
        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "optimizer" not in payload:
            raise CheckpointError(
                f"--resume {path}: not an anymae training checkpoint (format='anymae' with optimizer)"
            )
        if self.fsdp:  # every rank read the file: every rank refuses a mismatch alike, before any collective
            check_state_dict(self.model.state_dict(), payload["model"], source=str(path), strict=True)
            load_full_state(self.model, self.optimizer, payload["model"], payload["optimizer"], self.ctx)
        else:
            load_state_dict_checked(self.model, payload["model"], source=str(path), strict=True)
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        if "progress" in payload:
            self.state = Progress(**payload["progress"])
        else:  # format 1: saved at the end of epoch `epoch`
            self.state = Progress(epoch=payload["epoch"] + 1, step=payload["step"])
        saved_world = payload.get("world_size", 1)
        if self.state.batch and saved_world != self.ctx.world_size:
            raise CheckpointError(
                f"--resume {path}: saved inside an epoch by {saved_world} process(es); resume it with the same "
                f"number of processes (now {self.ctx.world_size}) or from an epoch-end checkpoint"
            )
        restore_rng(payload["rng"])
        self.checkpoint = path

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The unsharded model and optimizer state dicts, the same layout under DDP and FSDP (complete on rank 0)."""
        if self.fsdp:
            return gather_full_state(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()

    def _plain_model(self) -> MaskedAutoencoder:
        """The model as one plain module on rank 0, for the held-out evaluation that rank 0 runs alone: an FSDP
        model's forward is a collective, so every rank gathers its weights into a fresh unsharded copy on rank 0."""
        if not self.fsdp:
            return self.model
        state, _ = gather_full_state(self.model)
        if not self.ctx.is_main:
            return self.model
        plain = build_model(self.cfg.model, registry=self.registry)
        plain.load_state_dict(state)
        return plain.to(self.device)

    @contextmanager
    def _no_grad_sync(self) -> Iterator[None]:
        """A non-final micro-step of an accumulation window: DDP's ``no_sync``; FSDP2 keeps the unsharded
        gradients of every block until the last micro-step reduce-scatters their sum (memory: one fp32 copy of
        the full gradients, for fewer collectives)."""
        if not self.fsdp:
            with self.net.no_sync():
                yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    @contextmanager
    def _metrics(self) -> Iterator[Any]:
        if not self.ctx.is_main:
            yield None
            return
        with self.metrics_path.open("a") as stream:
            yield stream

    def _log(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            self.metrics.flush()


@torch.no_grad()
def evaluate_heldout(
    model: MaskedAutoencoder,
    modality: Any,
    cfg: Config,
    dataset: Dataset,
    *,
    device: torch.device,
    path: Path,
) -> tuple[float, float, Path | None]:
    """Masked-patch loss on held-out data with masks fixed by ``train.seed``, the trivial baseline's loss
    (each removed patch predicted by its own mean), and the reconstruction figure of the first samples."""
    model.eval()
    safe = SafeDataset(dataset, max_bad_fraction=cfg.train.max_bad_fraction, seed=cfg.train.seed)
    loader = DataLoader(safe, batch_size=cfg.train.batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loss_sum = base_sum = weight = 0.0
    figure = None
    for i, batch in enumerate(loader):
        if i >= max(cfg.train.heldout_batches, 1):
            break
        x = _inputs(batch).to(device)
        forced = sample_mask(
            model.masking,
            batch=x.shape[0],
            grid=model.tokenizer.grid,
            mask_ratio=model.mask_ratio,
            device=torch.device("cpu"),
            generator=generator,
        )
        _, pred, mask = model(x, mask=forced.to(device))
        target = model.forward_target(x)
        count = mask.sum().item()
        loss_sum += masked_mse(pred.float(), target, mask).item() * count
        base_sum += patch_mean_baseline(target, mask).item() * count
        weight += count
        if i == 0 and cfg.train.figure_samples > 0:
            k = cfg.train.figure_samples
            figure = modality.render_reconstruction(
                inputs=x[:k].cpu(),
                pred=model.pred_to_pixels(x[:k], pred[:k].float()).cpu(),
                mask=mask[:k].cpu(),
                tokenizer=model.tokenizer.cpu(),
                data=cfg.data,
                path=path,
            )
            model.tokenizer.to(device)
    return loss_sum / weight, base_sum / weight, figure


# --- helpers ----------------------------------------------------------------------------------------------
def _check_step_in_backward(cfg: Config, ctx: DistContext) -> None:
    """``optim.step_in_backward`` updates a parameter as soon as its local gradient exists: that needs one
    backward per update on one process, and no GradScaler (whose unscale and inf check see all gradients)."""
    if not cfg.optim.step_in_backward:
        return
    conflicts = [
        text
        for text, bad in (
            (f"train.accum_iter={cfg.train.accum_iter} (needs 1)", cfg.train.accum_iter > 1),
            (f"{ctx.world_size} processes (needs 1: the update would precede the all-reduce)", ctx.enabled),
            ("train.precision=fp16 (its GradScaler needs every gradient)", cfg.train.precision == "fp16"),
        )
        if bad
    ]
    if conflicts:
        raise ConfigError(f"optim.step_in_backward cannot be used with {'; '.join(conflicts)}")


def _use_fsdp(cfg: Config, ctx: DistContext) -> bool:
    """``train.distributed: fsdp`` shards over the processes of a group; one process has nothing to shard
    over, so it trains the plain model (as ``ddp`` does) with a warning. fp16 + fused AdamW is refused: torch's
    fused kernel fails on the sharded GradScaler's DTensors (torch 2.11)."""
    train = cfg.train
    if train.distributed != "fsdp":
        return False
    if train.precision == "fp16" and cfg.optim.fused:
        raise ConfigError(
            "train.distributed=fsdp with train.precision=fp16 needs optim.fused=false (torch's fused AdamW "
            "does not take the sharded GradScaler's DTensors); or use train.precision=bf16"
        )
    if not ctx.enabled:
        warnings.warn(
            "train.distributed=fsdp with one process: nothing to shard over, training the plain model "
            "(launch with torchrun --nproc_per_node N to shard it)",
            RuntimeWarning,
            stacklevel=3,
        )
    return ctx.enabled


def _grad_scaler(device: torch.device, *, fsdp: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler; FSDP's ranks hold different gradient shards, so its inf/NaN check must be all-reduced
    (``ShardedGradScaler``) or the ranks could disagree on skipping a step."""
    if fsdp:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def _inputs(batch: Any) -> torch.Tensor:
    """SafeDataset batches are dicts; plain datasets yield inputs or (input, label) pairs."""
    if isinstance(batch, dict):
        return batch["input"]
    return batch[0] if isinstance(batch, (list, tuple)) else batch


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
