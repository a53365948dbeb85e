"""Fine-tuning and linear probing as a task of the one training loop (official ``main_finetune`` /
``main_linprobe`` semantics).

Fine-tuning: AdamW with layer-wise lr decay, drop path, timm RandAugment + random erasing, timm Mixup/CutMix
with soft-target cross-entropy (label smoothing otherwise). Linear probing: the encoder frozen (and kept in
eval mode: no drop path), BatchNorm1d(affine=False) + Linear head trained with LARS, plain cross-entropy.
Both: lr = blr * effective_batch / 256, per-iteration warm-up + cosine; the periodic check is top-1/top-5 (and
mAP for multi-label data) on the held-out split; ``checkpoint-best.pt`` (best top-1, or mAP) and
``checkpoint-last.pt`` (every epoch) are written by rank 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from anymae.core.build.classifier import Classifier, build_classifier, param_groups_lars, param_groups_layer_decay
from anymae.core.build.data_source import labelled_data
from anymae.core.config import ClassifyConfig, config_to_dict, resolve_model_config
from anymae.core.data.samples import DataError, dataset_traits, input_size, to_device
from anymae.core.distributed.context import DistContext, broadcast_object
from anymae.core.evaluate.classification import LabelledSafeDataset, evaluate, format_stats
from anymae.core.io.checkpoint import CLASSIFIER_FORMAT, CheckpointError
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.train.recipe_guard import warn_recipe_mismatch
from anymae.core.train.results import ClassifyResult
from anymae.core.train.run import seed_everything
from anymae.core.train.trainer import Check, Task, Trainer, run_task
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["CLASSIFIER_FORMAT", "ClassifyResult", "ClassifyTask", "FrameMixup", "MultiLabelMixup", "train_classifier"]


def train_classifier(
    cfg: ClassifyConfig,
    pretrained: MaskedAutoencoder | MultiModalMAE,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    resume: str | None = None,
) -> ClassifyResult:
    """Fine-tune or linearly probe (``cfg.mode``) the pre-trained MAE ``pretrained`` on ``cfg.data`` (a linear
    probe with ``linprobe.solver: lbfgs`` is solved by :func:`anymae.core.train.probe.train_probe` instead).

    ``resume``: a checkpoint of this run, or "auto" for the newest one of runs/<name> (and its -N siblings); the
    run continues in that folder where the checkpoint left off, with the model, optimizer, GradScaler, best
    result and RNG states it saved."""
    registry = resolve_registry(registry)
    if cfg.linprobe is not None and cfg.linprobe.solver == "lbfgs":  # features once, a fit to convergence
        from anymae.core.train.probe import check_probe_config, train_probe

        check_probe_config(cfg, resume=resume)
        return train_probe(cfg, pretrained, registry=registry, progress=progress)
    return run_task(lambda ctx, device: ClassifyTask(cfg, pretrained, registry=registry, ctx=ctx, device=device),
                    cfg, progress=progress, resume=resume)  # fmt: skip


class FrameMixup:
    """timm's Mixup/CutMix for inputs of any rank: ``(N, C, T, H, W)`` clips are mixed as ``(N, C*T, H, W)``,
    so a CutMix box covers the same pixels in every frame. (VideoMAE passes 5-D clips to timm's Mixup
    directly, whose ``x[:, :, y0:y1, x0:x1]`` then cuts along time and height: not a box.)"""

    def __init__(self, mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
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


class ClassifyTask(Task):
    checkpoint_format = CLASSIFIER_FORMAT
    keeps_last = True
    final_numbered = False  # checkpoint-last.pt is the final state

    def __init__(
        self,
        cfg: ClassifyConfig,
        pretrained: MaskedAutoencoder | MultiModalMAE,
        *,
        registry: Registry,
        ctx: DistContext,
        device: torch.device,
    ) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.command = cfg.mode
        self.finetune = cfg.mode == "finetune"
        head = cfg.head
        self.train_set, self.eval_set = self._datasets(pretrained, registry)
        warn_recipe_mismatch(cfg, len(self.train_set), world_size=ctx.world_size, main=ctx.is_main)
        traits = dataset_traits(self.train_set)
        self.multi_label = traits.multi_label
        self.num_classes = head.num_classes or len(self.train_set.classes)
        if self.num_classes < len(self.train_set.classes):
            raise DataError(
                f"{cfg.mode}.num_classes={self.num_classes} but the training split has "
                f"{len(self.train_set.classes)} classes: {self.train_set.classes[:10]}"
            )
        self.weights = self._sample_weights()
        seed_everything(cfg.train.seed)
        self.model: Classifier = self._build_model(pretrained, registry).to(device)
        # Items may stack S augmentations of one file (VideoMAE's --num_sample): every one is a sample of the step.
        self.views_per_item = traits.samples_per_item
        self.mixup = self._mixup()
        self.criterion = self._criterion()
        self.key = "map" if self.multi_label else "acc1"  # the model-selection metric
        self.best: dict[str, float] = {self.key: -1.0}
        self.stats: dict[str, float] = dict(self.best)  # the last evaluation

    # --- building ----------------------------------------------------------------------------------------
    def _datasets(self, pretrained: MaskedAutoencoder | MultiModalMAE, registry: Registry) -> tuple[Dataset, Dataset]:
        cfg, head = self.cfg, self.cfg.head
        model_cfg = resolve_model_config(pretrained.config["model"], registry)
        labelled = labelled_data(
            model_cfg, cfg.data, registry=registry, parts=head.parts, tokenizer_overrides=head.tokenizer
        )
        if self.finetune:
            augment = {"recipe": "finetune", "auto_augment": head.auto_augment, "reprob": head.reprob,
                       "remode": head.remode, "recount": head.recount}  # fmt: skip
        else:
            augment = {"recipe": "linprobe"}
        return labelled.split("train", augment=augment), labelled.split("heldout", crop_pct=head.eval_crop_pct)

    def _build_model(self, pretrained: MaskedAutoencoder | MultiModalMAE, registry: Registry) -> Classifier:
        cfg, head, finetune = self.cfg, self.cfg.head, self.finetune
        model = build_classifier(
            pretrained,
            num_classes=self.num_classes,
            global_pool=head.global_pool,
            head_bn=not finetune,
            drop_path=head.drop_path if finetune else 0.0,
            head_init_std=head.head_init_std if finetune else 0.01,
            tokenizer_overrides=head.tokenizer,
            init_bands=head.init_bands,
            token_masking=head.token_masking if finetune else None,
            token_mask_ratio=head.token_mask_ratio if finetune else 0.0,
            parts=head.parts,
            registry=registry,
        )
        model.config["classes"] = list(self.train_set.classes)
        model.config["data"] = config_to_dict(cfg.data)
        model.config["eval_crop_pct"] = head.eval_crop_pct
        model.config["view_reduce"] = head.view_reduce
        if not finetune:  # linear probe: only the BatchNorm + head train
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith(("head.", "head_bn."))
        return model

    def _sample_weights(self) -> list[float] | None:
        """The training set's ``sample_weights()`` when ``balanced_sampling`` is on, else None."""
        if not self.cfg.head.balanced_sampling:
            return None
        weights = dataset_traits(self.train_set).sample_weights
        if weights is None:
            raise DataError(
                f"{self.cfg.mode}.balanced_sampling: the {self.cfg.head.modality} training set has no "
                "sample_weights(); turn balanced_sampling off"
            )
        return list(weights())

    def _mixup(self) -> FrameMixup | MultiLabelMixup | None:
        head = self.cfg.head
        if not self.finetune or (head.mixup <= 0 and head.cutmix <= 0):
            return None
        from timm.data import Mixup

        if self.cfg.train.batch_size * self.views_per_item % 2:
            raise DataError(f"mixup/cutmix need an even train.batch_size, got {self.cfg.train.batch_size}")
        if self.multi_label:
            if head.cutmix > 0:
                raise DataError("finetune.cutmix: multi-label data supports mixup only; set finetune.cutmix=0")
            return MultiLabelMixup(alpha=head.mixup, prob=head.mixup_prob)
        return FrameMixup(
            Mixup(
                mixup_alpha=head.mixup,
                cutmix_alpha=head.cutmix,
                prob=head.mixup_prob,
                switch_prob=head.mixup_switch_prob,
                mode=head.mixup_mode,
                label_smoothing=head.label_smoothing,
                num_classes=self.num_classes,
            )
        )

    def _criterion(self) -> nn.Module:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.multi_label:
            return nn.BCEWithLogitsLoss()  # AudioMAE's AudioSet loss, on (mixed) multi-hot targets
        if self.mixup is not None:
            return SoftTargetCrossEntropy()  # mixup already smooths the targets
        smoothing = self.cfg.head.label_smoothing if self.finetune else 0.0
        return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()

    # --- the task's part of the loop ---------------------------------------------------------------------
    def loader_dataset(self) -> Dataset:
        train = self.cfg.train
        return LabelledSafeDataset(self.train_set, seed=train.seed, max_bad_fraction=train.max_bad_fraction)

    def sample_weights(self) -> list[float] | None:
        return self.weights

    def epoch_samples(self) -> int | None:
        return self.cfg.head.epoch_samples

    def optimizer(self, base_lr: float) -> torch.optim.Optimizer:
        opt = self.cfg.optim
        if opt.optimizer == "lars":
            from timm.optim import Lars

            groups = param_groups_lars(self.model, weight_decay=opt.weight_decay)
            return Lars(groups, lr=base_lr, momentum=opt.momentum, trust_coeff=opt.trust_coeff)
        layer_decay = self.cfg.head.layer_decay if self.finetune else 1.0
        groups = param_groups_layer_decay(self.model, weight_decay=opt.weight_decay, layer_decay=layer_decay)
        return torch.optim.AdamW(groups, lr=base_lr, betas=opt.betas)

    def train_mode(self, net: nn.Module) -> None:
        net.train()
        if not self.finetune:
            self.model.tokenizer.eval()
            self.model.encoder.eval()  # frozen features: deterministic, no drop path

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, int]:
        x = to_device(batch["input"], self.device)
        y = batch["label"].to(self.device, non_blocking=True)
        if self.views_per_item > 1:  # (N, S, ...) -> (N*S, ...), each view with its item's label
            x, y = x.flatten(0, 1), y.repeat_interleave(self.views_per_item, dim=0)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return self.criterion(net(x), y), input_size(x)

    def check(self, trainer: Trainer, epoch: int) -> Check:
        """Accuracy on the held-out split, every rank taking its share of the samples."""
        cfg = self.cfg
        stats = evaluate(self.model, self.eval_set, batch_size=cfg.train.batch_size, device=self.device,
                         ctx=self.ctx, autocast=trainer.autocast, view_reduce=cfg.head.view_reduce)  # fmt: skip
        self.stats = stats
        best = stats[self.key] > self.best[self.key]
        if best:
            self.best = stats
        return Check({f"eval_{k}": v for k, v in stats.items()}, format_stats(stats), best=best)

    def payload(self) -> dict[str, Any]:
        return {"format": CLASSIFIER_FORMAT, "config": self.model.config, "eval": dict(self.stats),
                "best": dict(self.best)}  # fmt: skip

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        saved_mode = "finetune" if payload.get("run_config", {}).get("finetune") else "linprobe"
        if saved_mode != self.cfg.mode:
            raise CheckpointError(f"--resume {path}: a {saved_mode} run, but this is {self.cfg.mode}")
        self.best = dict(payload.get("best") or self.best)
        self.stats = dict(payload.get("eval") or self.best)

    def result(self, trainer: Trainer) -> ClassifyResult:
        best = broadcast_object(self.best, self.ctx)
        stats = broadcast_object(self.stats, self.ctx)
        run_dir = trainer.run_dir
        return ClassifyResult(run_dir, run_dir / "checkpoint-best.pt", run_dir / "checkpoint-last.pt",
                              best["acc1"], stats["acc1"], stats["acc5"], trainer.metrics.path,
                              best_map=best.get("map"), last_map=stats.get("map"))  # fmt: skip
