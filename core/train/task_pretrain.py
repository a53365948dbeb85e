"""Pre-training as a task of the one training loop (:mod:`anymae.core.train.trainer`): masked inputs in, the
masked-patch loss out; the periodic check is the held-out masked-patch loss next to the trivial baseline, on
masks fixed by ``train.seed``, with a reconstruction figure (``reconstruction-epochNNNN.png``, and the last one
also as ``reconstruction.png``), and, when the data has labels, the k-NN accuracy of the encoder's features.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anymae.core.build.data_source import labelled_data, modality_for
from anymae.core.build.models import build_model
from anymae.core.build.shard_source import log_sources, split_dataset
from anymae.core.config import COMPOSITE, Config, ConfigError, config_to_dict
from anymae.core.data.samples import DataError, SafeDataset, dataset_traits, input_size, to_device
from anymae.core.distributed.context import DistContext, gather_full_state
from anymae.core.evaluate.composite import check_composite
from anymae.core.evaluate.knn import knn_accuracy
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.figures import render_figure
from anymae.core.model.loss import masked_mse, patch_mean_baseline
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import sample_mask
from anymae.core.model.modality import Modality
from anymae.core.train.optim import param_groups_weight_decay, step_in_backward
from anymae.core.train.run import resume_path, seed_everything
from anymae.core.train.trainer import Check, Task, Trainer, run_task
from anymae.core.weights.init_from import init_model_from
from anymae.core.weights.loading import CHECKPOINT_FORMAT
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["PretrainResult", "PretrainTask", "evaluate_heldout", "pretrain"]


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    train_loss: float  # mean loss of the last epoch
    heldout_loss: float | None  # masked-patch loss on held-out data, fixed masks
    baseline_loss: float | None  # the same for predicting each patch's own mean
    figure: Path | None
    metrics: Path
    retrieval: list[str] = field(default_factory=list)  # a composite's last check: "retrieval a->b: R@1 ..." lines


def pretrain(
    cfg: Config, *, resume: str | None = None, registry: Registry | None = None, progress: bool = True
) -> PretrainResult:
    """Pre-train ``cfg`` on its modality's data; ``resume`` is a checkpoint path or ``"auto"`` (newest in the run).

    Under ``torchrun`` every process calls this; rank 0 writes the run folder, checkpoints and metrics.
    """
    registry = resolve_registry(registry)
    return run_task(lambda ctx, device: PretrainTask(cfg, registry=registry, ctx=ctx, device=device, resume=resume),
                    cfg, progress=progress, resume=resume)  # fmt: skip


class PretrainTask(Task):
    command = "pretrain"
    checkpoint_format = CHECKPOINT_FORMAT
    has_decoder = True

    def __init__(
        self,
        cfg: Config,
        *,
        registry: Registry,
        ctx: DistContext,
        device: torch.device,
        resume: str | None = None,
    ) -> None:
        self.cfg, self.registry, self.ctx, self.device = cfg, registry, ctx, device
        self.fsdp = _use_fsdp(cfg, ctx)
        _check_step_in_backward(cfg, ctx)
        self.step_in_backward = cfg.optim.step_in_backward
        self.composite = cfg.model.modality == COMPOSITE
        self.modality = modality_for(cfg.model, registry=registry)
        # Everything that can fail on the user's inputs fails here, before a model is built.
        log_sources(cfg.data, main=ctx.is_main)
        self.train_set = split_dataset(self.modality, cfg.data, cfg.model.tokenizer, split="train", training=True)
        self.heldout_set = split_dataset(self.modality, cfg.data, cfg.model.tokenizer, split="heldout")
        seed_everything(cfg.train.seed)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model: MaskedAutoencoder | MultiModalMAE = build_model(cfg.model, registry=registry).to(device)
        # model.init_from: a checkpoint's weights, adapted; a resumed run restores its own instead ("auto" with
        # nothing to resume yet is a first start).
        resumes = bool(resume) and resume_path(resume, cfg, pattern="checkpoint-*.pt") is not None
        self.init_report = None if resumes else init_model_from(self.model, cfg.model, registry=registry,
                                                                log=ctx.is_main)  # fmt: skip
        self.masker = self.model.sample_masker()  # a composite's draws each part's mask and its modality dropout
        # Items may stack S views of one file (VideoMAE's repeated sampling): S masks, flattened per step.
        self.views_per_item = dataset_traits(self.train_set).samples_per_item
        # Optional end of the input pipeline on the device (e.g. images with data.decode=gpu): its collate runs
        # in the workers, the transform itself in the step.
        self.device_transform = self.modality.device_transform(cfg.data, cfg.model.tokenizer, device=device)
        self.heldout: tuple[float, float] | None = None  # the last check's (loss, baseline)
        self.retrieval: list[str] = []  # a composite's last check's retrieval lines
        self.part_losses: dict[str, torch.Tensor] = {}  # a composite's loss of each part (+ contrastive), last step
        self.knn_sets = self._knn_sets()

    def _knn_sets(self) -> tuple[Dataset, Dataset] | None:
        """The training and held-out splits with labels (class folders, label lists) for a k-NN check of the
        features in every periodic check; None when the data has none, or several labels per item."""
        if self.heldout_set is None or not self.cfg.train.knn:
            return None
        try:
            labelled = labelled_data(self.cfg.model, self.cfg.data, registry=self.registry)
            sets = tuple(labelled.split(split) for split in ("train", "heldout"))
        except DataError:  # unlabelled data: the checks report the held-out loss only
            return None
        if dataset_traits(sets[0]).multi_label:  # k-NN's class vote needs one label per item
            return None
        return sets  # type: ignore[return-value]

    def loader_dataset(self) -> Dataset:
        return SafeDataset(
            self.train_set, seed=self.cfg.train.seed, mask_fn=self.masker, masks_per_item=self.views_per_item
        )

    def collate(self) -> Any:
        return self.device_transform.collate if self.device_transform is not None else None

    def optimizer(self, base_lr: float) -> torch.optim.Optimizer:
        optim = self.cfg.optim
        optimizer = torch.optim.AdamW(
            param_groups_weight_decay(self.model, optim.weight_decay),
            lr=base_lr,
            betas=optim.betas,
            fused=optim.fused or None,
        )
        if optim.step_in_backward:  # updates happen inside backward; the trainer only counts the step
            step_in_backward(self.model, optimizer)
        return optimizer

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        if self.device_transform is not None:  # may mark more bad samples in batch["bad"], counted by the trainer
            x = self.device_transform(batch)
        else:
            x = to_device(batch["input"], self.device)
        mask = batch["mask"].to(self.device, non_blocking=True)
        if self.views_per_item > 1:  # (N, S, ...) -> (N*S, ...)
            x, mask = x.flatten(0, 1), mask.flatten(0, 1)
        out = net(x, mask=mask)
        if self.composite:  # each part's loss, and the contrastive term's before its weight
            self.part_losses = out.losses | ({"contrastive": out.contrastive} if out.contrastive is not None else {})
        return out[0], input_size(x)

    def step_record(self) -> dict[str, float]:
        return {f"loss_{name}": round(float(loss), 6) for name, loss in self.part_losses.items()}

    def check(self, trainer: Trainer, epoch: int) -> Check:
        """Held-out masked-patch loss and figure, run by rank 0 (an FSDP model is first gathered on every rank)."""
        if self.heldout_set is None:
            return Check({}, f"train loss {trainer.epoch_loss:.4f} (no held-out split)")
        model = self._plain_model()
        if not self.ctx.is_main:
            return Check({}, "")
        path = trainer.run_dir / f"reconstruction-epoch{epoch + 1:04d}.png"
        extra = ""
        if self.composite:  # each part's loss, and how much each part's loss owes to the others
            held = check_composite(model, self.modality, self.cfg, self.heldout_set, device=self.device, path=path)
            record, loss, baseline, figure = held.record, held.loss, held.baseline, held.figure
            extra = "".join(f"\n{line}" for line in held.cross_lines + held.retrieval_lines)
            self.retrieval = held.retrieval_lines
        else:
            loss, baseline, figure = evaluate_heldout(
                model, self.modality, self.cfg, self.heldout_set, device=self.device, path=path
            )
            record = {}
        self.heldout = (loss, baseline)
        ratio = loss / baseline if baseline else float("nan")
        record.update(heldout_loss=loss, baseline_loss=baseline, heldout_ratio=round(ratio, 6))
        line = (
            f"train loss {trainer.epoch_loss:.4f}, held-out masked-patch loss {loss:.4f} vs {baseline:.4f} for "
            f"the trivial baseline ({ratio:.2f}x)"
        )
        if self.composite:
            line += " (" + ", ".join(held.part_summaries) + ")"
        if self.knn_sets is not None:  # DINO's weighted k-NN of the held-out features against the training ones
            # A composite's joint features and each part's alone, on one read of the data.
            views = {"": model, **({name: model.restricted([name]) for name in model.parts} if self.composite else {})}
            scores = knn_accuracy(views, *self.knn_sets, batch_size=self.cfg.train.batch_size, device=self.device)
            knn = scores.pop("")
            record.update(knn_top1=knn["knn_top1"], knn_top5=knn["knn_top5"])
            line += f", k-NN top-1 {knn['knn_top1']:.1f}%"
            for name, alone in scores.items():
                record[f"knn_top1_{name}"] = alone["knn_top1"]
                line += f" ({name} alone {alone['knn_top1']:.1f}%)"
        line += extra
        return Check(record, line, figure=figure)

    def payload(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "format_version": 2, "config": config_to_dict(self.cfg),
                "init_from": self.init_report}  # fmt: skip

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        self.init_report = payload.get("init_from")  # what the run started from, kept in every checkpoint

    def result(self, trainer: Trainer) -> PretrainResult:
        loss, baseline = self.heldout if self.heldout is not None else (None, None)
        figure = trainer.copy_last_figure(trainer.run_dir / "reconstruction.png")
        assert trainer.checkpoint is not None
        return PretrainResult(trainer.run_dir, trainer.checkpoint, trainer.epoch_loss, loss, baseline, figure,
                              trainer.metrics.path, self.retrieval)  # fmt: skip

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


@torch.no_grad()
def evaluate_heldout(
    model: MaskedAutoencoder,
    modality: Modality,
    cfg: Config,
    dataset: Dataset,
    *,
    device: torch.device,
    path: Path,
) -> tuple[float, float, Path | None]:
    """Masked-patch loss on held-out data with masks fixed by ``train.seed``, the trivial baseline's loss
    (each removed patch predicted by its own mean), and the reconstruction figure of the first samples.
    The model is left in eval mode; the global random generators are not touched."""
    model.eval()
    safe = SafeDataset(dataset, max_bad_fraction=cfg.train.max_bad_fraction, seed=cfg.train.seed)
    loader = DataLoader(safe, batch_size=cfg.train.batch_size, shuffle=False, generator=torch.Generator())
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loss_sum = base_sum = weight = 0.0
    figure = None
    for i, batch in enumerate(loader):
        if i >= max(cfg.train.heldout_batches, 1):
            break
        x = batch["input"].to(device)
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
            # Drawn as the paper does (each removed patch de-normalized with its true statistics), captioned so.
            figure, _ = render_figure(modality, model, inputs=x[:k], pred=pred[:k], mask=mask[:k], data=cfg.data,
                                      path=path)  # fmt: skip
    return loss_sum / weight, base_sum / weight, figure


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
    if cfg.model.modality == COMPOSITE:
        raise ConfigError("train.distributed=fsdp: a composite model (model.modality: composite) trains under ddp")
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
