"""Semantic segmentation as a task of the one training loop: ``anymae segment`` (the MAE paper's ADE20K transfer,
appendix A.4, following BEiT's semantic segmentation code).

A :class:`~anymae.core.build.segmenter.Segmenter` (the pre-trained encoder at the crop size + a registered dense
head) is trained end to end on the modality's segmentation data with per-pixel cross-entropy (plus the head's
auxiliary loss), AdamW with layer-wise lr decay, ``lr = blr * effective_batch / 256``, per-iteration warm-up and
cosine. The periodic check segments every held-out image at full resolution with sliding windows
(:func:`~anymae.core.evaluate.segmentation.segment_image`), each rank its share, one confusion matrix summed over
the ranks: mIoU, per-class IoU and pixel accuracy in ``metrics.jsonl`` and TensorBoard, with a figure of image /
truth / prediction; ``checkpoint-best.pt`` (best mIoU) and ``checkpoint-last.pt`` (every epoch) are written by
rank 0. Unusable samples (no mask, sizes that differ, a class out of range, unreadable) are named and skipped:
replaced and counted in training, left out and counted in the check.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from anymae.core.build.models import build_model
from anymae.core.build.segmenter import SEGMENTER_FORMAT, Segmenter, build_segmenter, param_groups_layer_decay
from anymae.core.build.shard_source import log_sources, segmentation_split
from anymae.core.config import ModelConfig, config_to_dict, resolve_model_config
from anymae.core.config.segment import SegmentConfig, head_options, pair
from anymae.core.data.samples import DataError, PairedSafeDataset
from anymae.core.distributed.context import DistContext, all_sum, broadcast_object
from anymae.core.evaluate.segment_figure import save_segmentation_figure
from anymae.core.evaluate.segmentation import ConfusionMatrix, SegmentationScores, segment_image
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.heads import segmentation_loss
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.train.run import seed_everything
from anymae.core.train.trainer import Check, Task, Trainer, run_task
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["PairSafeDataset", "SegmentResult", "SegmentTask", "segment_from_config", "train_segmenter"]


@dataclass
class SegmentResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    miou: float  # the last check, in %
    pixel_accuracy: float  # %
    images: int  # held-out images scored
    skipped: int  # held-out images left out as unusable
    best_miou: float  # %
    metrics: Path


def segment_from_config(cfg: SegmentConfig, *, resume: str | None = None, progress: bool = True) -> SegmentResult:
    """``anymae segment``: load ``segment.checkpoint`` (anything :func:`load_model` reads) or build a random init of
    the config's ``model``, and train the segmenter on it."""
    head = cfg.segment
    if head.checkpoint:
        pretrained = load_model(head.checkpoint)
        if pretrained.config["model"]["modality"] != head.modality:
            raise CheckpointError(
                f"{head.checkpoint} is a {pretrained.config['model']['modality']!r} model but the config says "
                f"segment.modality={head.modality!r}"
            )
        if cfg.model is not None:
            _check_architecture(cfg.model, pretrained.config["model"], head.checkpoint)
    else:
        seed_everything(cfg.train.seed)
        pretrained = build_model(cfg.model, with_decoder=False)  # type: ignore[arg-type]
    if not isinstance(pretrained, MaskedAutoencoder):
        raise CheckpointError(f"segment.checkpoint {head.checkpoint}: composite models cannot be segmented yet")
    return train_segmenter(cfg, pretrained, progress=progress, resume=resume)


# The architecture a checkpoint fixes: a config's model section naming these must agree with it.
ARCHITECTURE = ("embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "cls_token", "norm_eps")
TOKENIZER_ARCHITECTURE = ("patch_size", "in_chans")


def _check_architecture(model: ModelConfig, theirs: dict[str, Any], checkpoint: str) -> None:
    """Refuse a ``model`` section that differs from ``checkpoint``'s architecture, naming every key."""
    ours = config_to_dict(model)
    wrong = [f"model.{k}: {ours[k]!r} here, {theirs.get(k)!r} in the file" for k in ARCHITECTURE
             if ours[k] != theirs.get(k)]  # fmt: skip
    ours_tok, theirs_tok = ours.get("tokenizer") or {}, theirs.get("tokenizer") or {}
    wrong += [f"model.tokenizer.{k}: {ours_tok.get(k)!r} here, {theirs_tok.get(k)!r} in the file"
              for k in TOKENIZER_ARCHITECTURE if ours_tok.get(k) != theirs_tok.get(k)]  # fmt: skip
    if wrong:
        raise CheckpointError(
            f"segment.checkpoint {checkpoint}: the config's model section differs from the file's architecture: "
            f"{'; '.join(wrong)} (remove the model section or match it)"
        )


def train_segmenter(
    cfg: SegmentConfig,
    pretrained: MaskedAutoencoder,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    resume: str | None = None,
) -> SegmentResult:
    """Train ``cfg``'s segmenter on ``pretrained``'s encoder; ``resume``: a checkpoint of this run, or "auto"."""
    registry = resolve_registry(registry)
    return run_task(lambda ctx, device: SegmentTask(cfg, pretrained, registry=registry, ctx=ctx, device=device),
                    cfg, progress=progress, resume=resume)  # fmt: skip


class PairSafeDataset(PairedSafeDataset):
    """:class:`PairedSafeDataset` for ``(input, mask)`` items; ``"label"`` is the (H, W) int64 mask."""

    def convert(self, second: Any) -> Any:
        return second.long()


class SegmentTask(Task):
    command = "segment"
    checkpoint_format = SEGMENTER_FORMAT
    keeps_last = True
    final_numbered = False  # checkpoint-last.pt is the final state

    def __init__(
        self,
        cfg: SegmentConfig,
        pretrained: MaskedAutoencoder,
        *,
        registry: Registry,
        ctx: DistContext,
        device: torch.device,
    ) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, device
        head, data = cfg.segment, cfg.data
        model_cfg = resolve_model_config(pretrained.config["model"], registry)
        self.crop = pair(head.crop) or tuple(model_cfg.tokenizer.size)
        self.eval_crop = pair(head.eval_crop) or self.crop
        self.eval_stride = pair(head.eval_stride) or tuple(max(1, 2 * c // 3) for c in self.eval_crop)
        self.num_classes, self.ignore_index = data.num_classes, data.ignore_index
        self.classes = list(data.classes or [str(k) for k in range(self.num_classes)])
        seed_everything(cfg.train.seed)
        model = build_segmenter(pretrained, head=head.head, num_classes=self.num_classes, crop=self.crop,
                                layers=head.layers, drop_path=head.drop_path, head_options=head_options(head),
                                registry=registry)  # fmt: skip
        if self.eval_crop != self.crop:
            raise DataError(f"segment.eval_crop {list(self.eval_crop)}: the encoder is built for the training crop "
                            f"{list(self.crop)}; sliding windows must be that size")  # fmt: skip
        model.config["data"] = config_to_dict(data)
        model.config["eval"] = {"crop": list(self.eval_crop), "stride": list(self.eval_stride),
                                "flip": head.eval_flip, "scales": list(head.eval_scales)}  # fmt: skip
        if ctx.enabled:  # the pyramid's and UperNet's BatchNorm statistics over the global batch (BEiT: SyncBN)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model: Segmenter = model.to(device)
        modality = registry.modality(model_cfg.modality)
        tokenizer = resolve_model_config(model.config["model"], registry).tokenizer  # at the crop size
        log_sources(data, main=ctx.is_main)
        self.train_set = segmentation_split(modality, data, tokenizer, split="train", train=True)
        self.eval_set = segmentation_split(modality, data, tokenizer, split="heldout", train=False)
        self.best: dict[str, float] = {"miou": -1.0}
        self.stats: dict[str, float] = dict(self.best)  # the last check

    # --- the task's part of the loop ---------------------------------------------------------------------
    def loader_dataset(self) -> Dataset:
        train = self.cfg.train
        return PairSafeDataset(self.train_set, seed=train.seed, max_bad_fraction=train.max_bad_fraction)

    def optimizer(self, base_lr: float) -> torch.optim.Optimizer:
        opt = self.cfg.optim
        groups = param_groups_layer_decay(self.model, weight_decay=opt.weight_decay,
                                          layer_decay=self.cfg.segment.layer_decay)  # fmt: skip
        return torch.optim.AdamW(groups, lr=base_lr, betas=opt.betas)

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, int]:
        x = batch["input"].to(self.device, non_blocking=True)
        y = batch["label"].to(self.device, non_blocking=True)
        logits, aux = net(x)
        loss = segmentation_loss(logits.float(), None if aux is None else aux.float(), y,
                                 aux_weight=self.model.head.aux_weight, ignore_index=self.ignore_index)  # fmt: skip
        return loss, x.shape[0]

    def check(self, trainer: Trainer, epoch: int) -> Check:
        """mIoU and pixel accuracy over the held-out split, every rank segmenting its share of the images."""
        scores, images, skipped, rows = self.score(trainer, figure_rows=self.cfg.train.figure_samples)
        stats = {"miou": 100 * scores.miou, "pixel_accuracy": 100 * scores.pixel_accuracy, "images": float(images),
                 "skipped": float(skipped)}  # fmt: skip
        self.stats = stats
        best = stats["miou"] > self.best["miou"]
        if best:
            self.best = dict(stats)
        record = {f"eval_{k}": v for k, v in stats.items()}
        record.update({f"eval_iou_{name}": 100 * iou for name, iou in zip(self.classes, scores.per_class_iou,
                                                                          strict=True)})  # fmt: skip
        figure = None
        if self.ctx.is_main and rows:
            figure = save_segmentation_figure(rows, num_classes=self.num_classes, ignore_index=self.ignore_index,
                                              path=trainer.run_dir / f"segmentation-{epoch + 1:04d}.png")  # fmt: skip
        line = (f"mIoU {stats['miou']:.2f}%  pixel accuracy {stats['pixel_accuracy']:.2f}% on {images} held-out "
                f"images" + (f" ({skipped} unusable skipped)" if skipped else ""))  # fmt: skip
        return Check(record if self.ctx.is_main else {}, line, best=best, figure=figure,
                     figure_tag="heldout/segmentation")  # fmt: skip

    @torch.no_grad()
    def score(
        self, trainer: Trainer | None = None, *, figure_rows: int = 0
    ) -> tuple[SegmentationScores, int, int, list[tuple[Tensor, Tensor, Tensor]]]:
        """The held-out split segmented (this rank: images rank, rank + W, ...) -> scores of the confusion matrix
        summed over ranks, images scored, images skipped (all ranks), and the first ``figure_rows`` (image,
        truth, prediction) of rank 0."""
        head, model = self.cfg.segment, self.model
        was_training = model.training
        model.eval()
        matrix = ConfusionMatrix(num_classes=self.num_classes, ignore_index=self.ignore_index)
        rows: list[tuple[Tensor, Tensor, Tensor]] = []
        done = skipped = 0
        autocast = trainer.autocast if trainer is not None else torch.autocast(self.device.type, enabled=False)
        for index in range(self.ctx.rank, len(self.eval_set), self.ctx.world_size):
            try:
                image, truth = self.eval_set[index]
            except Exception as exc:  # an unusable sample is named and left out, never scored
                warnings.warn(f"held-out sample {index} skipped: {exc}", stacklevel=2)
                skipped += 1
                continue
            with autocast:
                probs = segment_image(lambda w: model.predict(w).float(), image[None].to(self.device),
                                      num_classes=self.num_classes, crop=self.eval_crop, stride=self.eval_stride,
                                      flip=head.eval_flip, scales=head.eval_scales)  # fmt: skip
            pred = probs.argmax(dim=1).cpu()  # (1, H, W)
            matrix.update(pred, truth[None])
            done += 1
            if len(rows) < figure_rows:
                rows.append((image, truth, pred[0]))
        model.train(was_training)
        summed = all_sum([*matrix.matrix.flatten().double().tolist(), done, skipped], self.ctx, self.device)
        k2 = self.num_classes**2
        matrix.matrix = torch.tensor(summed[:k2], dtype=torch.float64).round().long().view_as(matrix.matrix)
        return matrix.scores(), int(summed[k2]), int(summed[k2 + 1]), rows

    def payload(self) -> dict[str, Any]:
        return {"format": SEGMENTER_FORMAT, "config": self.model.config, "eval": dict(self.stats),
                "best": dict(self.best)}  # fmt: skip

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        saved = payload.get("config", {}).get("segmenter")
        if saved != self.model.config["segmenter"]:
            raise CheckpointError(f"--resume {path}: its segmenter {saved} is not this config's "
                                  f"{self.model.config['segmenter']}")  # fmt: skip
        self.best = dict(payload.get("best") or self.best)
        self.stats = dict(payload.get("eval") or self.best)

    def result(self, trainer: Trainer) -> SegmentResult:
        best = broadcast_object(self.best, self.ctx)
        stats = broadcast_object(self.stats, self.ctx)
        run_dir = trainer.run_dir
        return SegmentResult(run_dir, run_dir / "checkpoint-best.pt", run_dir / "checkpoint-last.pt", stats["miou"],
                             stats.get("pixel_accuracy", math.nan), int(stats.get("images", 0)),
                             int(stats.get("skipped", 0)), best["miou"], trainer.metrics.path)  # fmt: skip
