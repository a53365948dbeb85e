"""Weighted k-nearest-neighbour classification on frozen encoder features: the quickest "is it learning?" check.

DINO's protocol (Caron et al., 2021, ``eval_knn.py``): features L2-normalised, cosine similarity of every query
to every training feature, the ``k`` most similar training items vote for their class with weight
``exp(similarity / T)`` (k = 20, T = 0.07); a query's class scores are its summed votes. No training, no
hyper-parameter search: a number that moves as pre-training improves the features.

``extract_features`` runs an MAE encoder without masking over a labelled dataset (each item once, in batches);
``knn_classify`` scores queries; ``knn_accuracy`` does both and returns top-1/top-5 (%), for ``anymae knn`` and
for the periodic checks of pre-training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anymae.core.build.data_source import labelled_data
from anymae.core.config import (
    COMPOSITE,
    ConfigError,
    data_with_overrides,
    resolve_model_config,
    resolve_part_data,
)
from anymae.core.config.stream import data_section
from anymae.core.data.samples import DataError, dataset_traits, to_device
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.classification import LabelledSafeDataset
from anymae.core.evaluate.metrics import topk_correct
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "DEFAULT_K",
    "DEFAULT_TEMPERATURE",
    "KnnReport",
    "Pool",
    "compute_features",
    "default_pool",
    "extract_features",
    "knn_accuracy",
    "knn_classify",
    "knn_command",
    "pooled_features",
]

DEFAULT_K = 20  # DINO's k-NN evaluation
DEFAULT_TEMPERATURE = 0.07

Pool = Literal["cls", "mean"]


def default_pool(model: MaskedAutoencoder) -> Pool:
    """The linear probe's feature (reference section 2): the CLS token when the encoder has one, else the mean
    of the patch tokens (VideoMAE encoders have no CLS)."""
    return "cls" if model.encoder.num_prefix > 0 else "mean"


def pooled_features(model: MaskedAutoencoder, x: Tensor, *, pool: Pool) -> Tensor:
    """x -> (N, D): the encoder over every token (no masking), then the CLS token after the final LayerNorm
    (``pool="cls"``) or the mean of the patch tokens after it (``"mean"``)."""
    tokens = model.encode(x)  # (N, num_prefix + L, D)
    num_prefix = model.encoder.num_prefix
    if pool == "cls":
        if num_prefix == 0:
            raise ValueError("pool 'cls' needs a CLS token, but this encoder has none (model.cls_token); use 'mean'")
        return tokens[:, 0]  # (N, D)
    if pool == "mean":
        return tokens[:, num_prefix:].mean(dim=1)  # (N, D)
    raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")


@torch.no_grad()
def compute_features(
    features: Callable[[Tensor], Tensor],
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    pin_memory: bool = False,
    max_bad_fraction: float = 1.0,
    progress: bool = False,
    desc: str = "features",
    multi_label: bool = False,
    skip_unreadable: bool = False,
) -> tuple[Tensor, Tensor]:
    """``features(x) -> (N, D)`` over every ``(input, label)`` item of ``dataset``, once each, in order ->
    (features (M, D) float32 on the CPU, labels (M,) int64, or (M, K) float32 multi-hot rows with
    ``multi_label``).

    A dataset whose traits declare ``num_views = V > 1`` (several evaluation views per item, inputs
    ``(V, ...)``) gives each item the mean of its V view features. A multi-label dataset (traits
    ``multi_label``) is refused unless ``multi_label`` says the caller scores multi-hot rows (k-NN's class vote
    does not). Unreadable items are replaced by the next readable one with a warning naming the file (with
    ``skip_unreadable``: left out, so that M is the number of readable items); more than ``max_bad_fraction`` of
    them stop it with :class:`DataError`."""
    traits = dataset_traits(dataset)
    if traits.multi_label != multi_label:
        raise DataError(
            "k-NN needs single-label data; this dataset is multi-label (multi-hot rows)"
            if not multi_label
            else "multi_label=True was asked for, but the dataset is single-label"
        )
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the dataset has no items to compute features of")
    views = traits.num_views
    # Unreadable items are replaced (with a warning naming the file) as in evaluation; the loader has its own
    # generator, so a check inside a training run does not move the global RNG.
    loader = DataLoader(
        LabelledSafeDataset(dataset, max_bad_fraction=max_bad_fraction, stand_in=not skip_unreadable),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory and device.type == "cuda",
        generator=torch.Generator(),
    )
    rows, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        x, y = to_device(batch["input"], device), batch["label"]
        if views > 1:
            n = x.shape[0]
            rows.append(features(x.flatten(0, 1)).float().view(n, views, -1).mean(dim=1).cpu())  # (N, D)
        else:
            rows.append(features(x).float().cpu())  # (N, D)
        labels.append(torch.as_tensor(y, dtype=torch.float32 if multi_label else torch.int64))
        if skip_unreadable:  # a stand-in (bad = 1) for an unreadable item: the stand-in also comes in its own turn
            keep = torch.as_tensor(batch["bad"]) == 0
            rows[-1], labels[-1] = rows[-1][keep], labels[-1][keep]
    return torch.cat(rows), torch.cat(labels)


def extract_features(
    model: MaskedAutoencoder | Mapping[str, MaskedAutoencoder],
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    pool: Pool | None = None,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "features",
    skip_unreadable: bool = False,
) -> tuple[Tensor, Tensor]:
    """Frozen features of an MAE encoder over a labelled dataset -> (features (M, D), labels (M,)).

    ``model`` may be several encoders by name (e.g. a composite's joint features and each part's alone): their
    features side by side in name order, (M, sum of D), the data read once. ``pool``: see
    :func:`pooled_features`; default :func:`default_pool` of each. The models run in eval mode (restored
    afterwards) and are not moved: put them on ``device`` first. ``skip_unreadable``: see :func:`compute_features`."""
    models = dict(model) if isinstance(model, Mapping) else {"": model}
    pools = {name: pool or default_pool(m) for name, m in models.items()}
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        return compute_features(
            lambda x: torch.cat([pooled_features(m, x, pool=pools[name]) for name, m in models.items()], dim=1),
            dataset,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
            desc=desc,
            skip_unreadable=skip_unreadable,
        )
    finally:
        for name, m in reversed(models.items()):
            m.train(modes[name])


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Weighted k-NN class scores (M, K) of ``query_features (M, D)`` against ``train_features (N, D)`` with
    ``train_labels (N,)`` (class indices).

    Both sides are L2-normalised; each query's ``min(k, N)`` most cosine-similar training rows add
    ``exp(similarity / temperature)`` to their class. ``num_classes`` defaults to ``max(train_labels) + 1``.
    Queries go in chunks of ``chunk`` rows so that the (chunk, N) similarity matrix stays small."""
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D) with the same D, got {tuple(train_features.shape)} and "
            f"{tuple(query_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be at least 1 and temperature positive, got k={k}, temperature={temperature}")
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature")
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = torch.nn.functional.normalize(train_features.float(), dim=1)  # (N, D)
    labels = train_labels.to(bank.device, torch.int64)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query_features.shape[0], chunk):
        query = torch.nn.functional.normalize(query_features[start : start + chunk].float().to(bank.device), dim=1)
        sims, index = (query @ bank.T).topk(k, dim=1)  # (m, k) cosine similarity of the k nearest
        votes = (sims / temperature).exp()  # (m, k)
        scores = torch.zeros(query.shape[0], num_classes, device=bank.device)
        out.append(scores.scatter_add_(1, labels[index], votes))  # (m, K): votes summed per class
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(
    model: MaskedAutoencoder | Mapping[str, MaskedAutoencoder],
    train_set: Dataset,
    query_set: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    pool: Pool | None = None,
    num_workers: int = 0,
    progress: bool = False,
    skip_unreadable: bool = False,
) -> dict[str, float]:
    """k-NN top-1 / top-5 (%) of ``query_set`` (e.g. the held-out split) against ``train_set``, both labelled
    datasets with the same class numbering: ``{"knn_top1", "knn_top5", "n"}`` (``n``: queries).

    Several encoders by name (``{name: model}``) are scored on one read of the data: ``{name: {...}}``.
    ``skip_unreadable``: unreadable items of either set are left out (:func:`compute_features`) and counted in
    ``"skipped"``."""
    options = {"batch_size": batch_size, "device": device, "pool": pool, "num_workers": num_workers,
               "skip_unreadable": skip_unreadable}  # fmt: skip
    (train_x, train_y), (query_x, query_y) = (
        extract_features(model, dataset, **options, progress=progress, desc=f"k-NN {name} features")
        for name, dataset in (("train", train_set), ("query", query_set))
    )
    classes = dataset_traits(train_set).classes
    num_classes = max(len(classes), int(train_y.max()) + 1, int(query_y.max()) + 1)
    n = query_y.shape[0]
    results, start = {}, 0
    for name, m in model.items() if isinstance(model, Mapping) else [("", model)]:
        stop = start + m.encoder.embed_dim  # this encoder's columns of the side-by-side features
        scores = knn_classify(train_x[:, start:stop], train_y, query_x[:, start:stop], k=k,
                              temperature=temperature, num_classes=num_classes)  # fmt: skip
        top1, top5 = topk_correct(scores, query_y)
        results[name] = {"knn_top1": 100.0 * top1 / n, "knn_top5": 100.0 * top5 / n, "n": float(n)}
        if skip_unreadable:
            results[name]["skipped"] = float(len(train_set) + len(query_set) - train_y.shape[0] - n)  # type: ignore[arg-type]
        start = stop
    return results if isinstance(model, Mapping) else results[""]


@dataclass
class KnnReport:
    """``anymae knn``'s result: the scores of :func:`knn_accuracy` and what they were computed over."""

    top1: float
    top5: float
    queries: int  # held-out items scored
    training_items: int  # readable training items that voted
    pool: Pool
    skipped: int  # unreadable files of either split, left out


def knn_command(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    parts: Sequence[str] | None = None,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    pool: Pool | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = False,
    registry: Registry | None = None,
) -> KnnReport:
    """``anymae knn``: k-NN top-1/top-5 of the held-out split of a checkpoint's data against its training split.

    The data section is the checkpoint's (anymae runs carry theirs), replaced by ``config``'s when given, then
    ``data.KEY=VALUE`` ``overrides``. ``parts``: a composite's parts whose features vote (default: all of them,
    joint). An unreadable file is skipped with a warning naming it and counted in ``skipped``."""
    registry = resolve_registry(registry)
    model = load_model(checkpoint)
    model_cfg = resolve_model_config(model.config["model"], registry)
    composite = model_cfg.modality == COMPOSITE
    if parts is not None and not composite:
        raise ConfigError(f"--parts is for composite models; {checkpoint} is a {model_cfg.modality} model")
    data_raw = data_with_overrides(model.config.get("data") or {}, overrides, command="knn", config=config)
    if composite:  # one data section per part
        data = resolve_part_data(model_cfg, data_raw, registry)
        model = model.restricted(list(parts)) if parts is not None else model
    else:
        data = data_section(registry.modality(model_cfg.modality).data_config, data_raw, "data")
    labelled = labelled_data(model_cfg, data, registry=registry)
    train_set, query_set = labelled.split("train"), labelled.split("heldout")
    target = resolve_device(device)
    stats = knn_accuracy(model.to(target), train_set, query_set, batch_size=batch_size, device=target, k=k,
                         temperature=temperature, pool=pool, num_workers=num_workers, progress=progress,
                         skip_unreadable=True)  # fmt: skip
    n, skipped = int(stats["n"]), int(stats["skipped"])
    return KnnReport(top1=stats["knn_top1"], top5=stats["knn_top5"], queries=n, pool=pool or default_pool(model),
                     training_items=len(train_set) + len(query_set) - n - skipped, skipped=skipped)  # fmt: skip
