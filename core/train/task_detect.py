"""Object detection and instance segmentation as a task of the one training loop: ``anymae detect`` (the MAE
paper's COCO transfer, Table 4, with ViTDet's Mask R-CNN recipe).

A :class:`~anymae.core.build.detector.Detector` (torchvision's Mask R-CNN on the pre-trained encoder) is trained
end to end on the modality's COCO-format data: the loss is the sum of Mask R-CNN's five losses (RPN objectness and
box regression, RoI classification and box regression, mask), AdamW with layer-wise lr decay and no weight decay
on norms, biases and the position table, ``lr = blr * effective_batch / 256``, per-iteration warm-up and cosine.
The periodic check detects every held-out image (each rank its share), rank 0 gathers the COCO results and scores
them with pycocotools' ``COCOeval`` (bbox and segm: AP, AP50, AP75, APs/m/l in ``metrics.jsonl`` and
TensorBoard, with a figure of held-out images and their detections); ``checkpoint-best.pt`` (best box AP) and
``checkpoint-last.pt`` (every epoch) are written by rank 0. What reading the COCO files dropped or kept aside is
printed at the start; an unreadable training image is named, replaced and counted, an unreadable held-out image
named and left out of the predictions (its objects then count as missed, so the AP stays honest).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from anymae.core.build.detector import DETECTOR_FORMAT, Detector, build_detector, param_groups_detector
from anymae.core.build.models import build_model
from anymae.core.build.shard_source import detection_split, log_sources
from anymae.core.config import config_to_dict, resolve_model_config
from anymae.core.config.detect import DetectConfig
from anymae.core.data.samples import DataError, PairedSafeDataset
from anymae.core.data.shards import ShardStream
from anymae.core.distributed.context import DistContext, broadcast_object
from anymae.core.evaluate.detect_predict import draw_detections, save_detection_figure
from anymae.core.evaluate.detection import DetectionScores, coco_ground_truth, coco_results, evaluate_coco
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.train.run import seed_everything
from anymae.core.train.trainer import Check, Task, Trainer, run_task
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["DetectResult", "DetectTask", "TargetSafeDataset", "collate_targets", "detect_from_config",
           "summary_line", "train_detector"]  # fmt: skip

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


@dataclass
class DetectResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    scores: dict[str, float]  # the last check: bbox_AP, bbox_AP50, ..., segm_APl (%), images
    best_box_ap: float  # %
    metrics: Path

    def summary(self) -> str:
        """The last check's :func:`summary_line`."""
        return summary_line(self.scores)


def summary_line(stats: dict[str, float]) -> str:
    """``box AP NN.N (AP50 NN.N), mask AP NN.N (AP50 NN.N) on N held-out images`` of a check's stats."""
    return (f"box AP {stats['bbox_AP']:.1f} (AP50 {stats['bbox_AP50']:.1f}), mask AP {stats['segm_AP']:.1f} "
            f"(AP50 {stats['segm_AP50']:.1f}) on {int(stats['images'])} held-out images")  # fmt: skip


def detect_from_config(cfg: DetectConfig, *, resume: str | None = None, progress: bool = True) -> DetectResult:
    """``anymae detect``: load ``detect.checkpoint`` (anything :func:`load_model` reads) or build a random init of
    the config's ``model``, and train the detector on it."""
    head = cfg.detect
    if head.checkpoint:
        pretrained = load_model(head.checkpoint)
        if pretrained.config["model"]["modality"] != head.modality:
            raise CheckpointError(
                f"{head.checkpoint} is a {pretrained.config['model']['modality']!r} model but the config says "
                f"detect.modality={head.modality!r}"
            )
    else:
        seed_everything(cfg.train.seed)
        pretrained = build_model(cfg.model, with_decoder=False)  # type: ignore[arg-type]
    if not isinstance(pretrained, MaskedAutoencoder):
        raise CheckpointError(f"detect.checkpoint {head.checkpoint}: composite models cannot be detectors")
    return train_detector(cfg, pretrained, progress=progress, resume=resume)


def train_detector(
    cfg: DetectConfig,
    pretrained: MaskedAutoencoder,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    resume: str | None = None,
) -> DetectResult:
    """Train ``cfg``'s detector on ``pretrained``'s encoder; ``resume``: a checkpoint of this run, or "auto"."""
    registry = resolve_registry(registry)
    return run_task(lambda ctx, device: DetectTask(cfg, pretrained, registry=registry, ctx=ctx, device=device),
                    cfg, progress=progress, resume=resume)  # fmt: skip


class TargetSafeDataset(PairedSafeDataset):
    """:class:`PairedSafeDataset` for ``(input, target)`` items (targets of any structure) under ``"target"``."""

    second_key = "target"


def collate_targets(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:class:`TargetSafeDataset` items -> ``input`` and ``target`` lists (detection images differ in size) and a
    ``bad`` tensor."""
    return {"input": [item["input"] for item in items], "target": [item["target"] for item in items],
            "bad": torch.tensor([item["bad"] for item in items])}  # fmt: skip


def _gather(rows: list[dict[str, Any]], ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's rows, concatenated on rank 0 (elsewhere: empty)."""
    if not ctx.enabled:
        return rows
    parts: list[Any] = [None] * ctx.world_size if ctx.is_main else []
    dist.gather_object(rows, parts if ctx.is_main else None, dst=0)
    return [row for part in parts for row in part] if ctx.is_main else []


class DetectTask(Task):
    command = "detect"
    checkpoint_format = DETECTOR_FORMAT
    keeps_last = True
    final_numbered = False  # checkpoint-last.pt is the final state

    def __init__(
        self,
        cfg: DetectConfig,
        pretrained: MaskedAutoencoder,
        *,
        registry: Registry,
        ctx: DistContext,
        device: torch.device,
    ) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, device
        head, data = cfg.detect, cfg.data
        model_cfg = resolve_model_config(pretrained.config["model"], registry)
        modality = registry.modality(model_cfg.modality)
        augment = ({"recipe": "lsj", "size": head.max_size, "scale": tuple(head.lsj_scale)} if head.augment == "lsj"
                   else {"recipe": "flip"})  # fmt: skip
        log_sources(data, main=ctx.is_main)
        self.train_set = detection_split(modality, data, model_cfg.tokenizer, split="train", augment=augment,
                                         training=True)  # fmt: skip
        self.eval_set = detection_split(modality, data, model_cfg.tokenizer, split="heldout", augment=None)
        train_coco, heldout_coco = self.train_set.instances, self.eval_set.instances
        if heldout_coco.category_ids != train_coco.category_ids:
            raise DataError(f"data.heldout_annotations: categories {heldout_coco.category_ids} differ from the "
                            f"training split's {train_coco.category_ids}")  # fmt: skip
        if ctx.is_main:
            reports = [("heldout", heldout_coco)]
            if isinstance(self.train_set, ShardStream):  # read as a stream: its COCO file was checked when packed
                print("data train: shards (what their COCO file dropped or clipped, anymae pack said)", flush=True)
            else:
                reports.insert(0, ("train", train_coco))
            for split, coco in reports:
                for line in coco.report.summary().splitlines():
                    print(f"data {split}: {line}", flush=True)
        self.ground_truth = coco_ground_truth(heldout_coco.ground_truth())
        self.category_ids = train_coco.category_ids
        self.class_names = list(train_coco.class_names)
        seed_everything(cfg.train.seed)
        model = build_detector(
            pretrained, backbone=head.backbone, categories=train_coco.categories, min_size=head.min_size,
            max_size=head.max_size, mean=data.mean, std=data.std, window=head.window, global_blocks=head.global_blocks,
            drop_path=head.drop_path, out_channels=head.out_channels, head_channels=head.head_channels,
            box_convs=head.box_convs, box_fc=head.box_fc, mask_convs=head.mask_convs,
            detector_options=head.detector_options, registry=registry,
        )  # fmt: skip
        model.config["data"] = config_to_dict(data)
        self.model: Detector = model.to(device)
        self.losses: dict[str, float] = {}  # the last micro-batch's parts
        self.best: dict[str, float] = {"bbox_AP": -1.0}
        self.stats: dict[str, float] = dict(self.best)  # the last check

    # --- the task's part of the loop ---------------------------------------------------------------------
    def loader_dataset(self) -> Dataset:
        train = self.cfg.train
        return TargetSafeDataset(self.train_set, seed=train.seed, max_bad_fraction=train.max_bad_fraction)

    def collate(self) -> Any:
        return collate_targets

    def optimizer(self, base_lr: float) -> torch.optim.Optimizer:
        opt = self.cfg.optim
        decay = self.cfg.detect.layer_decay
        groups = param_groups_detector(self.model, weight_decay=opt.weight_decay, layer_decay=decay)
        return torch.optim.AdamW(groups, lr=base_lr, betas=opt.betas)

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, int]:
        device = self.device
        images = [x.to(device, non_blocking=True) for x in batch["input"]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["target"]]
        parts = net(images, targets)
        self.losses = {name: float(value.detach()) for name, value in parts.items()}
        return sum(value.float() for value in parts.values()), len(images)  # type: ignore[return-value]

    def step_record(self) -> dict[str, float]:
        return {name: round(value, 6) for name, value in self.losses.items()}

    def check(self, trainer: Trainer, epoch: int) -> Check:
        """COCO AP of the held-out split, every rank detecting its share of the images."""
        scores, skipped, figure_rows = self.score(trainer, figure_rows=self.cfg.train.figure_samples)
        stats: dict[str, float] = {}
        if self.ctx.is_main:
            assert scores is not None
            stats = {**scores.bbox.as_dict("bbox_"), **scores.segm.as_dict("segm_"),  # type: ignore[union-attr]
                     "images": float(scores.num_images), "skipped": float(skipped)}  # fmt: skip
        stats = broadcast_object(stats, self.ctx)
        self.stats = stats
        best = stats["bbox_AP"] > self.best["bbox_AP"]
        if best:
            self.best = dict(stats)
        figure = None
        if self.ctx.is_main and figure_rows:
            figure = save_detection_figure(figure_rows, trainer.run_dir / f"detections-{epoch + 1:04d}.png")
        line = summary_line(stats)
        if skipped:
            line += f" ({skipped} unreadable: their objects count as missed)"
        return Check({f"eval_{k}": v for k, v in stats.items()} if self.ctx.is_main else {}, line, best=best,
                     figure=figure, figure_tag="heldout/detections")  # fmt: skip

    @torch.no_grad()
    def predictions(self, trainer: Trainer | None = None) -> tuple[list[dict[str, Any]], int, list[Tensor]]:
        """This rank's share of the held-out images (rank, rank + W, ...) detected -> its COCO results, the images
        it could not read, and the first ``train.figure_samples`` images drawn with their detections."""
        model, rows = self.model, self.cfg.train.figure_samples
        was_training = model.training
        model.eval()
        results: list[dict[str, Any]] = []
        drawn: list[Tensor] = []
        skipped = 0
        autocast = trainer.autocast if trainer is not None else torch.autocast(self.device.type, enabled=False)
        for index in range(self.ctx.rank, len(self.eval_set), self.ctx.world_size):
            try:
                image, target = self.eval_set[index]
            except Exception as exc:  # an unreadable image is named and left out; its objects count as missed
                warnings.warn(f"held-out image {self.eval_set.source(index)} skipped: {exc}", stacklevel=2)
                skipped += 1
                continue
            with autocast:
                (out,) = model([image.to(self.device)])
            out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}  # bf16 / fp16 under autocast
            results += coco_results(out, image_id=int(target["image_id"]), category_ids=self.category_ids)
            if len(drawn) < rows:
                drawn.append(draw_detections(image, out, class_names=self.class_names))
        model.train(was_training)
        return results, skipped, drawn

    def score(
        self, trainer: Trainer | None = None, *, figure_rows: int = 0
    ) -> tuple[DetectionScores | None, int, list[Tensor]]:
        """COCOeval of the held-out predictions of all ranks (rank 0; None elsewhere), the images skipped on
        this rank, and rank 0's drawn images."""
        results, skipped, drawn = self.predictions(trainer)
        gathered = _gather(results, self.ctx)
        skipped_all = _gather([{"skipped": skipped}], self.ctx)
        if not self.ctx.is_main:
            return None, skipped, []
        scores = evaluate_coco(self.ground_truth, gathered)
        return scores, sum(row["skipped"] for row in skipped_all), drawn[:figure_rows]

    def payload(self) -> dict[str, Any]:
        return {"format": DETECTOR_FORMAT, "config": self.model.config, "eval": dict(self.stats),
                "best": dict(self.best)}  # fmt: skip

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        saved = payload.get("config", {}).get("detector")
        if saved != self.model.config["detector"]:
            raise CheckpointError(f"--resume {path}: its detector {saved} is not this config's "
                                  f"{self.model.config['detector']}")  # fmt: skip
        self.best = dict(payload.get("best") or self.best)
        self.stats = dict(payload.get("eval") or self.best)

    def result(self, trainer: Trainer) -> DetectResult:
        best = broadcast_object(self.best, self.ctx)
        stats = broadcast_object(self.stats, self.ctx)
        run_dir = trainer.run_dir
        return DetectResult(run_dir, run_dir / "checkpoint-best.pt", run_dir / "checkpoint-last.pt", stats,
                            best.get("bbox_AP", math.nan), trainer.metrics.path)  # fmt: skip
