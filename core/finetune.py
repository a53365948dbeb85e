"""Fine-tuning, linear probing and evaluation of a pre-trained MAE encoder: one loop for both recipes
(official ``main_finetune`` / ``main_linprobe`` semantics), on one process or many (``torchrun``).

Fine-tuning: AdamW with layer-wise lr decay, drop path, timm RandAugment + random erasing, timm Mixup/CutMix
with soft-target cross-entropy (label smoothing otherwise). Linear probing: the encoder frozen (and kept in
eval mode: no drop path), BatchNorm1d(affine=False) + Linear head trained with LARS, plain cross-entropy.
Both: lr = blr * effective_batch / 256, per-iteration warm-up + cosine, top-1/top-5 on the held-out split
after every epoch, ``checkpoint-best.pt`` (highest top-1) and ``checkpoint-last.pt`` written by rank 0.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .classify import Classifier, build_classifier, param_groups_lars, param_groups_layer_decay
from .config import ClassifyConfig, config_to_dict, from_dict
from .data import DataError, EpochSampler
from .distributed import DistContext, all_sum, barrier, broadcast_object, run_then_teardown, setup
from .evaluation import LabelledSafeDataset, evaluate, format_stats, load_classifier, view_scores
from .metrics import topk_correct
from .optim import absolute_lr, cosine_lr
from .run import (
    NonFiniteLossError,
    PreemptedError,
    capture_rng,
    new_run_dir,
    on_sigterm,
    restore_rng,
    resume_path,
    seed_everything,
)

__all__ = [
    "CLASSIFIER_FORMAT",
    "ClassifyResult",
    "FrameMixup",
    "MultiLabelMixup",
    "evaluate",
    "format_stats",
    "load_classifier",
    "topk_correct",
    "train_classifier",
    "view_scores",
]

CLASSIFIER_FORMAT = "anymae-classifier"


@dataclass
class ClassifyResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_acc1: float
    last_acc1: float
    last_acc5: float
    metrics: Path
    best_map: float | None = None  # multi-label data: mAP (%) of the best and the last epoch
    last_map: float | None = None


class FrameMixup:
    """timm's Mixup/CutMix for inputs of any rank: ``(N, C, T, H, W)`` clips are mixed as ``(N, C*T, H, W)``,
    so a CutMix box covers the same pixels in every frame. (VideoMAE passes 5-D clips to timm's Mixup
    directly, whose ``x[:, :, y0:y1, x0:x1]`` then cuts along time and height: not a box.)"""

    def __init__(self, mixup: Any) -> None:
        self.mixup = mixup

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        mixed, target = self.mixup(x.reshape(shape[0], -1, *shape[-2:]) if x.ndim > 4 else x, y)
        return mixed.reshape(shape), target


class MultiLabelMixup:
    """Batch mixup for multi-hot targets: with probability ``prob``, ``x = lam x + (1 - lam) x.flip(0)`` and
    the same for ``y``, one ``lam ~ Beta(alpha, alpha)`` per batch (timm's batch mode without CutMix; timm's
    own Mixup one-hot encodes integer labels and cannot take multi-hot ones)."""

    def __init__(self, *, alpha: float, prob: float = 1.0) -> None:
        self.alpha, self.prob = alpha, prob

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if float(torch.rand(())) >= self.prob:
            return x, y
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        return lam * x + (1 - lam) * x.flip(0), lam * y + (1 - lam) * y.flip(0)


def train_classifier(
    cfg: ClassifyConfig, pretrained: Any, *, registry: Any = None, progress: bool = True, resume: str | None = None
) -> ClassifyResult:
    """Fine-tune or linearly probe (``cfg.mode``) the pre-trained MAE ``pretrained`` on ``cfg.data``.

    ``resume``: a ``checkpoint-last.pt`` of this run, or "auto" for the newest one of runs/<name> (and its -N
    siblings); the run continues in that folder from the epoch after the checkpoint's, with the model,
    optimizer, GradScaler, best result and RNG states it saved (each epoch's samples are seeded from
    ``(seed, epoch, index)``, so the resumed epochs see the same data as an uninterrupted run)."""
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    ctx, device = setup(cfg.train.device)
    return run_then_teardown(
        ctx, lambda: _ClassifyTrainer(cfg, pretrained, registry, ctx, device, progress=progress).run(resume)
    )


class _ClassifyTrainer:
    def __init__(
        self, cfg: ClassifyConfig, pretrained: Any, registry: Any, ctx: DistContext, device: torch.device, *,
        progress: bool,
    ) -> None:  # fmt: skip
        self.cfg, self.ctx, self.device, self.show_progress = cfg, ctx, device, progress
        head, train, finetune = cfg.head, cfg.train, cfg.mode == "finetune"
        model_raw = pretrained.config["model"]
        modality = registry.modality(model_raw["modality"])
        tok_raw = {**config_to_dict(model_raw.get("tokenizer") or {}), **head.tokenizer}
        tok_cfg = from_dict(modality.tokenizer_config, tok_raw, "model.tokenizer")
        if finetune:
            augment = {"recipe": "finetune", "auto_augment": head.auto_augment, "reprob": head.reprob,
                       "remode": head.remode, "recount": head.recount}  # fmt: skip
        else:
            augment = {"recipe": "linprobe"}
        self.train_set = modality.build_labelled_dataset(cfg.data, tok_cfg, split="train", augment=augment)
        self.eval_set = modality.build_labelled_dataset(
            cfg.data, tok_cfg, split="heldout", augment=None, crop_pct=head.eval_crop_pct
        )
        self.multi_label = bool(getattr(self.train_set, "multi_label", False))
        num_classes = head.num_classes or len(self.train_set.classes)
        if num_classes < len(self.train_set.classes):
            raise DataError(
                f"{cfg.mode}.num_classes={num_classes} but the training split has {len(self.train_set.classes)} "
                f"classes: {self.train_set.classes[:10]}"
            )
        self.sampler = EpochSampler(
            len(self.train_set), batch_size=train.batch_size, rank=ctx.rank, world_size=ctx.world_size,
            seed=train.seed, weights=self._sample_weights(), num_samples=head.epoch_samples,
        )  # fmt: skip
        seed_everything(train.seed)
        self.model: Classifier = build_classifier(
            pretrained,
            num_classes=num_classes,
            global_pool=head.global_pool,
            head_bn=not finetune,
            drop_path=head.drop_path if finetune else 0.0,
            head_init_std=head.head_init_std if finetune else 0.01,
            tokenizer_overrides=head.tokenizer,
            token_masking=getattr(head, "token_masking", None) if finetune else None,
            token_mask_ratio=getattr(head, "token_mask_ratio", 0.0) if finetune else 0.0,
            registry=registry,
        ).to(device)
        self.model.config["classes"] = list(self.train_set.classes)
        self.model.config["data"] = config_to_dict(cfg.data)
        self.model.config["eval_crop_pct"] = head.eval_crop_pct
        self.model.config["view_reduce"] = head.view_reduce
        if not finetune:  # linear probe: only the BatchNorm + head train
            for name, param in self.model.named_parameters():
                param.requires_grad = name.startswith(("head.", "head_bn."))
        self.net: nn.Module = self.model
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.loader = DataLoader(
            LabelledSafeDataset(self.train_set, seed=train.seed, max_bad_fraction=train.max_bad_fraction),
            batch_size=train.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=train.num_workers,
            pin_memory=train.pin_memory and device.type == "cuda",
            persistent_workers=train.persistent_workers and train.num_workers > 0,
            # Its own generator: a new iterator (each epoch, or at a resume inside one) draws a worker base seed,
            # which must not move the global generator that drop path and mixup use.
            generator=torch.Generator().manual_seed(train.seed),
        )
        # Items may stack S augmentations of one file (VideoMAE's --num_sample): every one is a sample of the step.
        self.views_per_item = int(getattr(self.train_set, "samples_per_item", 1))
        self.effective_batch = train.batch_size * self.views_per_item * train.accum_iter * ctx.world_size
        self.base_lr = absolute_lr(blr=cfg.optim.blr, effective_batch=self.effective_batch, lr=cfg.optim.lr)
        self.optimizer = self._optimizer()
        self.mixup: Any = None
        if finetune and (head.mixup > 0 or head.cutmix > 0):
            from timm.data import Mixup

            if train.batch_size * self.views_per_item % 2:
                raise DataError(f"mixup/cutmix need an even train.batch_size, got {train.batch_size}")
            if self.multi_label:
                if head.cutmix > 0:
                    raise DataError("finetune.cutmix: multi-label data supports mixup only; set finetune.cutmix=0")
                self.mixup = MultiLabelMixup(alpha=head.mixup, prob=head.mixup_prob)
            else:
                self.mixup = FrameMixup(
                    Mixup(
                        mixup_alpha=head.mixup,
                        cutmix_alpha=head.cutmix,
                        prob=head.mixup_prob,
                        switch_prob=head.mixup_switch_prob,
                        mode=head.mixup_mode,
                        label_smoothing=head.label_smoothing,
                        num_classes=num_classes,
                    )
                )
        self.criterion = self._criterion()
        self.scaler = torch.amp.GradScaler(device.type) if train.precision == "fp16" else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        self.preempt, self.preempt_agreed = threading.Event(), False  # SIGTERM: stop at the next window's end

    def _sample_weights(self) -> list[float] | None:
        """The training set's ``sample_weights()`` when ``balanced_sampling`` is on, else None."""
        if not self.cfg.head.balanced_sampling:
            return None
        weights = getattr(self.train_set, "sample_weights", None)
        if weights is None:
            raise DataError(
                f"{self.cfg.mode}.balanced_sampling: the {self.cfg.head.modality} training set has no "
                "sample_weights(); turn balanced_sampling off"
            )
        return list(weights())

    def _optimizer(self) -> torch.optim.Optimizer:
        opt = self.cfg.optim
        if opt.optimizer == "lars":
            from timm.optim import Lars

            groups = param_groups_lars(self.model, weight_decay=opt.weight_decay)
            return Lars(groups, lr=self.base_lr, momentum=opt.momentum, trust_coeff=opt.trust_coeff)
        layer_decay = getattr(self.cfg.head, "layer_decay", 1.0)
        groups = param_groups_layer_decay(self.model, weight_decay=opt.weight_decay, layer_decay=layer_decay)
        return torch.optim.AdamW(groups, lr=self.base_lr, betas=opt.betas)

    def _criterion(self) -> nn.Module:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.multi_label:
            return nn.BCEWithLogitsLoss()  # AudioMAE's AudioSet loss, on (mixed) multi-hot targets
        if self.mixup is not None:
            return SoftTargetCrossEntropy()  # mixup already smooths the targets
        smoothing = getattr(self.cfg.head, "label_smoothing", 0.0) if self.cfg.mode == "finetune" else 0.0
        return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()

    def run(self, resume: str | None = None) -> ClassifyResult:
        cfg, ctx = self.cfg, self.ctx
        last = resume_path(resume, cfg, pattern="checkpoint-last.pt") if resume else None
        run_dir = last.parent if last else (new_run_dir(cfg) if ctx.is_main else None)
        self.run_dir = Path(broadcast_object(str(run_dir), ctx))
        metrics_path = self.run_dir / "metrics.jsonl"
        if ctx.is_main and last is None:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        key = "map" if self.multi_label else "acc1"  # the model-selection metric
        self.best: dict[str, float] = {key: -1.0}
        start, position = 0, (0, [])
        if last is not None:
            start, self.best, position = self._restore(last)
        best = self.best
        self.metrics = metrics_path.open("a") if ctx.is_main else None
        stats = self.stats = dict(best)
        try:
            for epoch in range(start, cfg.train.epochs):
                with on_sigterm(self.preempt):
                    train_loss = self._run_epoch(epoch, *position)
                position = (0, [])
                every = cfg.head.eval_every_epochs
                if (epoch + 1) % every and epoch + 1 < cfg.train.epochs:  # not an evaluation epoch
                    self._log(epoch=epoch + 1, train_loss=train_loss)
                    if ctx.is_main:
                        print(f"epoch {epoch + 1}: train loss {train_loss:.4f}", flush=True)
                        self._save("checkpoint-last.pt", epoch + 1, stats, best)
                    self._stop_if_preempted(epoch)
                    continue
                stats = evaluate(self.model, self.eval_set, batch_size=cfg.train.batch_size, device=self.device,
                                 ctx=ctx, autocast=self.autocast, view_reduce=cfg.head.view_reduce)  # fmt: skip
                self._log(epoch=epoch + 1, train_loss=train_loss, **{f"eval_{k}": v for k, v in stats.items()})
                if ctx.is_main:
                    print(f"epoch {epoch + 1}: {format_stats(stats)}", flush=True)
                    if stats[key] > best[key]:
                        best = self.best = stats
                        self._save("checkpoint-best.pt", epoch + 1, stats, best)
                    self._save("checkpoint-last.pt", epoch + 1, stats, best)
                self.stats = stats
                self._stop_if_preempted(epoch)
        finally:
            if self.metrics is not None:
                self.metrics.close()
        barrier(ctx)
        best = broadcast_object(best, ctx)
        return ClassifyResult(self.run_dir, self.run_dir / "checkpoint-best.pt", self.run_dir / "checkpoint-last.pt",
                              best["acc1"], stats["acc1"], stats["acc5"], metrics_path,
                              best_map=best.get("map"), last_map=stats.get("map"))  # fmt: skip

    def _stop_if_preempted(self, epoch: int) -> None:
        """After an epoch's checkpoint: leave (exit code 75) when a SIGTERM arrived during the epoch."""
        barrier(self.ctx)
        if self.preempt_agreed and epoch + 1 < self.cfg.train.epochs:
            last = self.run_dir / "checkpoint-last.pt"
            raise PreemptedError(
                f"SIGTERM: stopped after epoch {epoch + 1} and wrote {last}; continue with --resume auto", last
            )

    def _run_epoch(self, epoch: int, start_batch: int = 0, losses: list[float] | None = None) -> float:
        """One training epoch from batch ``start_batch`` (resume; ``losses``: that epoch's losses so far).
        SIGTERM on any rank stops every rank at the end of the accumulation window: the position inside the
        epoch goes into ``checkpoint-last.pt`` and :class:`PreemptedError` is raised (at the end of an epoch the
        run loop does that after its evaluation)."""
        cfg, train = self.cfg, self.cfg.train
        self.sampler.set_epoch(epoch, start_batch)
        self.net.train()
        if cfg.mode == "linprobe":
            self.model.tokenizer.eval()
            self.model.encoder.eval()  # frozen features: deterministic, no drop path
        per_epoch, losses = self.sampler.batches_per_epoch, list(losses or [])
        started = time.perf_counter()
        bar = tqdm(self.loader, desc=f"{cfg.mode} epoch {epoch + 1}/{train.epochs}", total=per_epoch - start_batch,
                   disable=not (self.show_progress and self.ctx.is_main), dynamic_ncols=True)  # fmt: skip
        for it, batch in enumerate(bar, start=start_batch):
            first, last = it % train.accum_iter == 0, (it + 1) % train.accum_iter == 0 or it + 1 == per_epoch
            if first:
                lr = cosine_lr(epoch + it / per_epoch, lr=self.base_lr, min_lr=cfg.optim.min_lr,
                               warmup_epochs=cfg.optim.warmup_epochs, epochs=train.epochs)  # fmt: skip
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            x = batch["input"].to(self.device, non_blocking=True)
            y = batch["label"].to(self.device, non_blocking=True)
            if self.views_per_item > 1:  # (N, S, ...) -> (N*S, ...), each view with its item's label
                x, y = x.flatten(0, 1), y.repeat_interleave(self.views_per_item, dim=0)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            with self.autocast:
                loss = self.criterion(self.net(x), y)
            local = float(loss.detach())
            # One collective per micro-step: the summed loss and whether any rank was asked to stop (SIGTERM).
            loss_sum, preempt = all_sum([local, float(self.preempt.is_set())], self.ctx, self.device)
            self.preempt_agreed = self.preempt_agreed or preempt > 0
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(f"{cfg.mode}: loss is {loss_sum} at epoch {epoch + 1}, batch {it + 1}")
            sync = self.ctx.enabled and not last
            with self.net.no_sync() if sync else nullcontext():
                scaled = loss / train.accum_iter
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            losses.append(loss_sum / self.ctx.world_size)
            if last:
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.preempt_agreed and it + 1 < per_epoch:
                    self._preempted_inside(epoch, it + 1, losses)
            if it % train.log_every_steps == 0:
                rate = (it + 1 - start_batch) * x.shape[0] * self.ctx.world_size / (time.perf_counter() - started)
                self._log(epoch=round(epoch + it / per_epoch, 6), loss=losses[-1], lr=lr, samples_per_s=round(rate, 2))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        return sum(losses) / max(len(losses), 1)

    def _preempted_inside(self, epoch: int, batch: int, losses: list[float]) -> None:
        """Write the position inside ``epoch`` (``batch`` batches done) and stop every rank."""
        if self.ctx.is_main:
            self._save("checkpoint-last.pt", epoch, self.stats, self.best, batch=batch, losses=losses)
        barrier(self.ctx)
        last = self.run_dir / "checkpoint-last.pt"
        raise PreemptedError(
            f"SIGTERM: stopped at epoch {epoch + 1}, batch {batch}/{self.sampler.batches_per_epoch}, and wrote {last}; "
            "continue with --resume auto",
            last,
        )

    def _save(
        self, name: str, epochs_done: int, stats: dict[str, float], best: dict[str, float], *, batch: int = 0,
        losses: list[float] | None = None,
    ) -> Path:  # fmt: skip
        """A classifier checkpoint after ``epochs_done`` epochs and ``batch`` batches of the next one."""
        payload = {
            "format": CLASSIFIER_FORMAT,
            "config": self.model.config,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": epochs_done,
            "batch": batch,
            "epoch_losses": list(losses or []),
            "world_size": self.ctx.world_size,
            "eval": dict(stats),
            "best": dict(best),
            "rng": capture_rng(),
            "run_config": config_to_dict(self.cfg),
        }
        return write_checkpoint(payload, self.run_dir / name)

    def _restore(self, path: Path) -> tuple[int, dict[str, float], tuple[int, list[float]]]:
        """Load a ``checkpoint-last.pt`` of this run; returns the epoch to run, the best result so far and the
        position inside that epoch (batches done, their losses)."""
        from .loading import load_state_dict_checked

        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT or "rng" not in payload:
            raise CheckpointError(
                f"--resume {path}: not a resumable {self.cfg.mode} checkpoint (checkpoint-last.pt written by anymae "
                f"finetune / linprobe, with optimizer and RNG states)"
            )
        saved_mode = "finetune" if payload.get("run_config", {}).get("finetune") else "linprobe"
        if saved_mode != self.cfg.mode:
            raise CheckpointError(f"--resume {path}: a {saved_mode} run, but this is {self.cfg.mode}")
        load_state_dict_checked(self.model, payload["model"], source=str(path), strict=True)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"])
        batch = int(payload.get("batch", 0))
        saved_world = payload.get("world_size", self.ctx.world_size)
        if batch and saved_world != self.ctx.world_size:
            raise CheckpointError(
                f"--resume {path}: saved inside an epoch by {saved_world} process(es); resume it with the same "
                f"number of processes (now {self.ctx.world_size})"
            )
        if self.ctx.is_main:
            where = f"epoch {payload['epoch'] + 1}" + (f", batch {batch + 1}" if batch else "")
            print(f"resuming {self.cfg.mode} from {path}: {where} of {self.cfg.train.epochs} epochs")
        return int(payload["epoch"]), dict(payload["best"]), (batch, list(payload.get("epoch_losses", [])))

    def _log(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
