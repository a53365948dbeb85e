"""Evaluating classifiers: top-1/top-5 (and mAP for multi-label data) over a labelled split, multi-view
merging, and reading classifier checkpoints back. Used by the training loop's periodic evaluation and by
``anymae eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from anymae.core.build.classifier import Classifier
from anymae.core.build.composite_data import CompositeModality
from anymae.core.build.data_source import labelled_data, modality_for
from anymae.core.config import COMPOSITE, ConfigError, data_with_overrides, from_dict, resolve_model_config
from anymae.core.config.stream import data_section
from anymae.core.data.samples import (
    DataError,
    PairedSafeDataset,
    dataset_traits,
    input_size,
    to_device,
)
from anymae.core.distributed.context import DistContext, all_sum, setup, teardown
from anymae.core.evaluate.metrics import mean_average_precision, topk_correct
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "CheckpointScores",
    "LabelledSafeDataset",
    "evaluate",
    "evaluate_checkpoint",
    "format_stats",
    "load_classifier",
    "topk_correct",
    "view_scores",
]


class LabelledSafeDataset(PairedSafeDataset):
    """:class:`PairedSafeDataset` for ``(input, label)`` items: ``"label"`` is an int class index, or a float
    ``(K,)`` tensor for multi-label data."""

    def convert(self, second: Any) -> Any:
        return torch.as_tensor(second, dtype=torch.float32) if isinstance(second, (Tensor, list)) else int(second)


def format_stats(stats: dict[str, float]) -> str:
    """``mAP 12.34%  top-1 ...`` for the log line of an evaluation."""
    text = f"top-1 {stats['acc1']:.2f}%  top-5 {stats['acc5']:.2f}%"
    return f"mAP {stats['map']:.2f}%  {text}" if "map" in stats else text


def view_scores(model: nn.Module, x: Tensor, *, views: int, reduce: str, multi_label: bool) -> Tensor:
    """Scores ``(N, K)`` of a batch of ``views``-view samples ``x (N, V, ...)`` (or plain ``(N, ...)`` when
    ``views`` is 1): the V logits of a sample averaged (``reduce="logits"``), or its V probabilities
    (softmax, sigmoid for multi-label) averaged (``"softmax"``, VideoMAE's merge of test views)."""
    if views == 1:
        logits = model(x).float()
        return logits if reduce == "logits" else _probabilities(logits, multi_label)
    n = x.shape[0]
    logits = model(x.flatten(0, 1)).float().view(n, views, -1)  # (N, V, K)
    if reduce == "logits":
        return logits.mean(dim=1)
    return _probabilities(logits, multi_label).mean(dim=1)


def _probabilities(logits: Tensor, multi_label: bool) -> Tensor:
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


def _eval_loss(scores: Tensor, labels: Tensor, *, probabilities: bool, multi_label: bool) -> float:
    """Summed loss of a batch: cross-entropy (single-label) or BCE (multi-label), on logits or probabilities."""
    if multi_label:
        if probabilities:
            return float(nn.functional.binary_cross_entropy(scores.clamp(1e-7, 1 - 1e-7), labels, reduction="sum"))
        return float(nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="sum"))
    if probabilities:
        return float(nn.functional.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum"))
    return float(nn.functional.cross_entropy(scores, labels, reduction="sum"))


def _gather_rows(rows: list[Tensor], ctx: DistContext) -> Tensor:
    """Concatenate this rank's tensors, then every rank's (rank order)."""
    mine = torch.cat(rows) if rows else torch.zeros(0)
    if not ctx.enabled:
        return mine
    import torch.distributed as dist

    every: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(every, mine)
    return torch.cat([t for t in every if t.numel()])


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device, ctx: DistContext | None = None,
    num_workers: int = 0, autocast: Any = None, view_reduce: str = "logits",
) -> dict[str, float]:  # fmt: skip
    """Top-1 / top-5 accuracy (%) and the mean loss over every sample of ``dataset``, each counted once:
    rank r takes samples r, r + W, ... and the counts are summed over ranks.

    A dataset whose traits (:class:`~anymae.core.data.samples.DatasetTraits`) declare ``num_views = V > 1`` yields
    ``(V, ...)`` inputs whose V scores are merged (:func:`view_scores`, ``view_reduce``). A ``multi_label``
    dataset (multi-hot labels) adds ``"map"``, the mean average precision (%) over all samples of all ranks,
    and its loss is the binary cross-entropy; top-k then counts a sample when one of its k best classes is a
    positive."""
    ctx = ctx or DistContext()
    traits = dataset_traits(dataset)
    views, multi_label = traits.num_views, traits.multi_label
    was_training = model.training
    model.eval()
    shard = Subset(LabelledSafeDataset(dataset), list(range(ctx.rank, len(dataset), ctx.world_size)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    correct1 = correct5 = loss_sum = count = 0.0
    scores_seen, labels_seen = [], []
    for batch in loader:
        x, y = to_device(batch["input"], device), batch["label"].to(device)
        with autocast or nullcontext():
            scores = view_scores(model, x, views=views, reduce=view_reduce, multi_label=multi_label)
        c1, c5 = topk_correct(scores, y)
        correct1, correct5 = correct1 + c1, correct5 + c5
        loss_sum += _eval_loss(scores, y, probabilities=view_reduce != "logits", multi_label=multi_label)
        count += input_size(x)
        if multi_label:
            scores_seen.append(scores.cpu())
            labels_seen.append(y.cpu())
    correct1, correct5, loss_sum, count = all_sum([correct1, correct5, loss_sum, count], ctx, device)
    model.train(was_training)
    if count == 0:
        raise DataError("the evaluation split has no samples")
    stats = {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count, "loss": loss_sum / count, "n": count}
    if multi_label:
        stats["map"] = 100.0 * mean_average_precision(_gather_rows(scores_seen, ctx), _gather_rows(labels_seen, ctx))
    return stats


def load_classifier(path: str | Path, registry: Registry | None = None) -> Classifier:
    """A classifier checkpoint written by ``anymae finetune`` / ``anymae linprobe`` (or any classifier file that
    :func:`~anymae.core.weights.loading.load_classifier_file` reads: safetensors exports, ``anymae convert`` outputs,
    official ``mae_finetuned_*`` files) -> the model, in eval mode."""
    from anymae.core.weights.loading import load_classifier_file

    return load_classifier_file(path, registry=registry)


@dataclass
class CheckpointScores:
    """``anymae eval``'s result: :func:`evaluate`'s stats, the class folders found and those the classifier was
    trained on, and whether this process reports (rank 0)."""

    stats: dict[str, float]
    classes: list[str]
    trained_classes: list[str]
    is_main: bool


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "heldout",
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    batch_size: int = 64,
    device: str = "auto",
    registry: Registry | None = None,
) -> CheckpointScores:
    """``anymae eval``: a classifier checkpoint over ``split`` of the data section it was trained with, its
    ``data.root`` replaced by ``data_root`` and changed by ``data.KEY=VALUE`` ``overrides``."""
    registry = resolve_registry(registry)
    model = load_classifier(checkpoint, registry)
    config = model.config
    composite = config["model"]["modality"] == COMPOSITE
    data_raw = dict(config.get("data") or {})
    if data_root:
        if composite:
            raise ConfigError("--data-root: a composite's data has a section per part; use data.<part>.root=...")
        data_raw["root"] = data_root
    data_raw = data_with_overrides(data_raw, overrides, command="eval")
    model_cfg = resolve_model_config(config["model"], registry)
    parts = config["classifier"]["parts"] if composite else None  # the parts the classifier reads
    modality = modality_for(model_cfg, registry=registry, parts=parts)
    if isinstance(modality, CompositeModality):  # each part with its own data section
        data = {name: from_dict(part.data_config, data_raw.get(name), f"data.{name}")
                for name, part in modality.modalities.items()}  # fmt: skip
    else:
        data = data_section(modality.data_config, data_raw, "data")
    labelled = labelled_data(model_cfg, data, registry=registry, parts=parts)
    dataset = labelled.split(split, crop_pct=config.get("eval_crop_pct", 0.875))
    ctx, target = setup(device)
    try:
        stats = evaluate(model.to(target), dataset, batch_size=batch_size, device=target, ctx=ctx,
                         view_reduce=config.get("view_reduce", "logits"))  # fmt: skip
    finally:
        teardown(ctx)
    classes = list(dataset.classes)
    return CheckpointScores(stats, classes, list(config.get("classes", classes)), ctx.is_main)
