"""Linear probing that converges on small data (``linprobe.solver: lbfgs``).

The paper's probe (LARS, batch 16,384, 90 epochs; reference section 2) is made for ImageNet: on a thousand
images it takes a few hundred steps and stops far from its optimum. Here the same model is fitted exactly:

1. the frozen encoder runs once over the training split with the evaluation transform (no augmentation), giving
   one feature per item (``Classifier.forward_features``: the CLS token after the final norm, or the mean of the
   patch tokens + ``fc_norm`` with ``global_pool``);
2. the features are standardised with their mean and (biased) variance: this is the probe's
   ``BatchNorm1d(affine=False, eps=1e-6)`` head norm, whose running statistics are set to exactly these values;
3. a multinomial logistic regression (per-class binary ones for multi-label data) is solved by full-batch L-BFGS
   in float64: ``mean cross-entropy + l2 / 2 * |W|^2`` (bias not penalised), strictly convex, so L-BFGS reaches
   the unique optimum;
4. ``l2`` is chosen among ``linprobe.l2`` by accuracy (mAP for multi-label data; then the lower loss) on a random
   ``linprobe.l2_val_fraction`` of the training split fitted on the rest; the chosen value is refitted on all of it.

The result is an ordinary classifier checkpoint (``checkpoint-best.pt`` = ``checkpoint-last.pt``) that
``anymae eval`` reads, in a new run folder with ``config.yaml`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import Dataset

from anymae.core.build.classifier import Classifier, build_classifier
from anymae.core.build.data_source import labelled_data
from anymae.core.config import ClassifyConfig, ConfigError, config_to_dict, resolve_model_config
from anymae.core.data.samples import DataError, dataset_traits
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.classification import evaluate, format_stats
from anymae.core.evaluate.knn import compute_features
from anymae.core.evaluate.metrics import mean_average_precision, topk_correct
from anymae.core.io.checkpoint import CLASSIFIER_FORMAT, write_checkpoint
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.train.results import ClassifyResult
from anymae.core.train.run import MetricsWriter, new_run_dir, seed_everything
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "DEFAULT_L2_GRID",
    "ProbeResult",
    "check_probe_config",
    "fit_logistic_regression",
    "select_l2",
    "train_probe",
]

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # standardised features, mean loss: 1/(C N) in sklearn terms
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_MAX_ITER = 1000
BN_EPS = 1e-6  # the probe head's BatchNorm1d eps (official linear probe)
SMALL_FIT = 2_000_000  # N x D of feature matrices fitted on one thread (see _one_thread_if_small)


@dataclass(kw_only=True)
class ProbeResult(ClassifyResult):
    """What ``anymae linprobe`` reports: the SGD loop's result, plus the solver's L2 strength, training score and
    the number of unreadable training files left out of the fit."""

    l2: float
    train_acc1: float
    skipped: int = 0


def check_probe_config(cfg: ClassifyConfig, *, resume: str | None = None) -> None:
    """Refuse what solver lbfgs cannot do at run time: ``--resume`` and several processes (``torchrun``). (Its
    unused ``optim.*`` / ``train.*`` keys are refused when the config is read.)"""
    if resume:
        raise ConfigError("--resume: linprobe.solver=lbfgs has nothing to resume (a run takes one feature pass)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("linprobe.solver=lbfgs runs on one process; run it without torchrun")


def _loss(logits: Tensor, y: Tensor, multi_label: bool) -> Tensor:
    if multi_label:  # per-class binary logistic regressions, summed over classes
        return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=1).mean()
    return nn.functional.cross_entropy(logits, y)


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    l2: float,
    multi_label: bool = False,
    max_iter: int = DEFAULT_MAX_ITER,
    tolerance: float = 1e-7,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Minimise ``mean_i loss(W x_i + b, y_i) + l2 / 2 * |W|^2`` over ``W (K, D)``, ``b (K,)`` by full-batch L-BFGS
    (strong-Wolfe line search) in float64, from zero. ``x (N, D)``; ``y (N,)`` class indices, or ``(N, K)`` 0/1 rows
    with ``multi_label`` (binary cross-entropy per class). Returns ``W``, ``b`` (float64) and
    ``{"loss", "grad_max", "iterations"}``: the final objective, its largest absolute gradient entry (0 at the
    optimum) and the L-BFGS iterations used."""
    x = x.double()
    y = y.double() if multi_label else y.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = _loss(x @ weight.T + bias, y, multi_label) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with _one_thread_if_small(x.numel()):
        optimizer.step(objective)
        loss = objective().detach()
    grad_max = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return weight.detach(), bias.detach(), {"loss": float(loss), "grad_max": grad_max, "iterations": iterations}


@contextmanager
def _one_thread_if_small(size: int) -> Iterator[None]:
    """Small fits run on one intra-op thread: their operations take microseconds, where thread hand-offs cost more
    than they save (50x slower measured on a busy 2-core machine); the setting is restored afterwards."""
    threads = torch.get_num_threads()
    if size > SMALL_FIT or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _score(logits: Tensor, y: Tensor, multi_label: bool) -> tuple[float, float]:
    """(accuracy % or mAP %, mean loss) of ``logits`` against ``y``."""
    loss = float(_loss(logits, y.double() if multi_label else y, multi_label))
    if multi_label:
        return 100.0 * mean_average_precision(logits, y), loss
    return 100.0 * topk_correct(logits, y, ks=(1,))[0] / len(y), loss


def select_l2(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    grid: tuple[float, ...],
    val_fraction: float,
    seed: int,
    multi_label: bool = False,
    max_iter: int = DEFAULT_MAX_ITER,
) -> tuple[float, list[dict[str, float]]]:
    """Pick ``l2`` from ``grid``: fit on a random ``1 - val_fraction`` of the rows, score on the rest (accuracy,
    or mAP for multi-label; ties go to the lower validation loss, then the larger l2). Returns the choice and one
    record per candidate ``{"l2", "val_score", "val_loss", "grad_max", "iterations"}``."""
    if len(grid) == 1:
        return grid[0], []
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(x))
    if n_val < 1 or n_val >= len(x):
        raise DataError(
            f"linprobe.l2_val_fraction={val_fraction} leaves {n_val} of {len(x)} training items to pick l2 with; "
            "give one l2 value (no search) or more data"
        )
    val, fit = order[:n_val], order[n_val:]
    records = []
    for l2 in grid:
        weight, bias, info = fit_logistic_regression(
            x[fit], y[fit], num_classes=num_classes, l2=l2, multi_label=multi_label, max_iter=max_iter
        )
        score, loss = _score(x[val].double() @ weight.T + bias, y[val], multi_label)
        records.append(
            {
                "l2": l2,
                "val_score": score,
                "val_loss": loss,
                "grad_max": info["grad_max"],
                "iterations": info["iterations"],
            }
        )
    best = max(records, key=lambda r: (r["val_score"], -r["val_loss"], r["l2"]))
    return best["l2"], records


def train_probe(
    cfg: ClassifyConfig,
    pretrained: MaskedAutoencoder | MultiModalMAE,
    *,
    registry: Registry | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Fit the linear probe of ``cfg`` (``linprobe.solver: lbfgs``) on the frozen encoder of ``pretrained`` and
    write it as a classifier checkpoint in a new run folder (see the module docstring)."""
    registry = resolve_registry(registry)
    check_probe_config(cfg)
    head, train = cfg.head, cfg.train
    seed_everything(train.seed)
    labelled = labelled_data(
        resolve_model_config(pretrained.config["model"], registry),
        cfg.data,
        registry=registry,
        parts=head.parts,
        tokenizer_overrides=head.tokenizer,
    )
    train_set = labelled.split("train", crop_pct=head.eval_crop_pct)
    eval_set = labelled.split("heldout", crop_pct=head.eval_crop_pct)
    multi_label = dataset_traits(train_set).multi_label
    device = resolve_device(train.device)
    model = _probe_model(cfg, pretrained, train_set, registry=registry).to(device).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def features(x: Tensor) -> Tensor:
        with autocast:
            return model.forward_features(x)

    x, y = compute_features(
        features,
        train_set,
        batch_size=train.batch_size,
        device=device,
        num_workers=train.num_workers,
        pin_memory=train.pin_memory,
        max_bad_fraction=train.max_bad_fraction,
        progress=progress,
        desc="linprobe features",
        multi_label=multi_label,
        skip_unreadable=True,  # each named in a warning as it is met; the fit is on the readable files only
    )
    skipped = len(train_set) - len(x)  # type: ignore[arg-type]
    run_dir = new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    metrics = MetricsWriter(run_dir, enabled=True, loggers=cfg.train.loggers, config=config_to_dict(cfg))
    try:
        fit = _fit_probe(cfg, model, x.double(), y, multi_label=multi_label, metrics=metrics, skipped=skipped)
        stats = evaluate(model, eval_set, batch_size=train.batch_size, device=device, num_workers=train.num_workers,
                         autocast=autocast, view_reduce=head.view_reduce)  # fmt: skip
        metrics.log(step=len(fit.records), **fit.summary(), **{f"eval_{k}": v for k, v in stats.items()})
    finally:
        metrics.close()
    print(f"{fit.line(multi_label)}; held-out {format_stats(stats)}{fit.skipped_note()}")
    return _write_probe(cfg, model, fit, stats, run_dir=run_dir, metrics=metrics)


def _probe_model(
    cfg: ClassifyConfig, pretrained: MaskedAutoencoder | MultiModalMAE, train_set: Dataset, *, registry: Registry
) -> Classifier:
    """The classifier whose head the probe fits: ``pretrained``'s encoder, CLS or mean-pooled features, the
    ``BatchNorm1d`` head norm of the official linear probe, and as many classes as the training split names."""
    head = cfg.head
    classes = list(train_set.classes)
    num_classes = head.num_classes or len(classes)
    if num_classes < len(classes):
        raise DataError(
            f"linprobe.num_classes={num_classes} but the training split has {len(classes)} classes: {classes[:10]}"
        )
    model = build_classifier(
        pretrained,
        num_classes=num_classes,
        global_pool=head.global_pool,
        head_bn=True,
        head_init_std=0.01,
        tokenizer_overrides=head.tokenizer,
        init_bands=head.init_bands,
        parts=head.parts,
        registry=registry,
    )
    model.config.update(classes=classes, data=config_to_dict(cfg.data), eval_crop_pct=head.eval_crop_pct,
                        view_reduce=head.view_reduce)  # fmt: skip
    return model


@dataclass
class _ProbeFit:
    """The fitted head: the chosen ``l2``, the candidates' records, the solver's info and the training score."""

    l2: float
    records: list[dict[str, float]]
    info: dict[str, float]
    train_score: float
    train_loss: float
    skipped: int  # unreadable training files, left out

    def summary(self) -> dict[str, float]:
        return {"l2": self.l2, "train_loss": self.train_loss, "train_score": self.train_score,
                "grad_max": self.info["grad_max"], "iterations": self.info["iterations"],
                "skipped": self.skipped}  # fmt: skip

    def skipped_note(self) -> str:
        return f" ({self.skipped} unreadable training files skipped)" if self.skipped else ""

    def line(self, multi_label: bool) -> str:
        how = "picked on a split of the training set" if self.records else "given"
        return (
            f"l2 {self.l2:g} ({how}); {self.info['iterations']} L-BFGS iterations, largest gradient "
            f"{self.info['grad_max']:.1e}; training {'mAP' if multi_label else 'top-1'} {self.train_score:.2f}%"
        )


def _fit_probe(
    cfg: ClassifyConfig,
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    multi_label: bool,
    metrics: MetricsWriter,
    skipped: int,
) -> _ProbeFit:
    """Standardise the features ``x (N, D)``, pick ``l2`` and fit the head on all of them; the statistics and
    the fitted weights go into ``model``'s ``head_bn`` and ``head``."""
    head, num_classes = cfg.head, model.head.out_features
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    z = (x - mean) / (var + BN_EPS).sqrt()  # what head_bn computes in eval mode with these running statistics
    max_iter = head.max_iter or DEFAULT_MAX_ITER
    l2, records = select_l2(z, y, num_classes=num_classes, grid=head.l2 or DEFAULT_L2_GRID, multi_label=multi_label,
                            seed=cfg.train.seed, val_fraction=head.l2_val_fraction or DEFAULT_VAL_FRACTION,
                            max_iter=max_iter)  # fmt: skip
    for step, record in enumerate(records):
        metrics.log(step=step, **record)
    weight, bias, info = fit_logistic_regression(
        z, y, num_classes=num_classes, l2=l2, multi_label=multi_label, max_iter=max_iter
    )
    train_score, train_loss = _score(z @ weight.T + bias, y, multi_label)
    with torch.no_grad():
        model.head_bn.running_mean.copy_(mean)
        model.head_bn.running_var.copy_(var)
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    return _ProbeFit(l2, records, info, train_score, train_loss, skipped)


def _write_probe(
    cfg: ClassifyConfig,
    model: Classifier,
    fit: _ProbeFit,
    stats: dict[str, float],
    *,
    run_dir: Path,
    metrics: MetricsWriter,
) -> ProbeResult:
    """The fitted probe as a classifier checkpoint (``checkpoint-best.pt`` = ``checkpoint-last.pt``)."""
    payload = {
        "format": CLASSIFIER_FORMAT,
        "config": model.config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "eval": dict(stats),
        "best": dict(stats),
        "probe": {"solver": "lbfgs", "l2": fit.l2, "candidates": fit.records, "skipped": fit.skipped, **fit.info},
        "run_config": config_to_dict(cfg),
    }
    best = write_checkpoint(payload, run_dir / "checkpoint-best.pt")
    last = write_checkpoint(payload, run_dir / "checkpoint-last.pt")
    return ProbeResult(
        run_dir,
        best,
        last,
        stats["acc1"],
        stats["acc1"],
        stats["acc5"],
        metrics.path,
        l2=fit.l2,
        train_acc1=fit.train_score,
        skipped=fit.skipped,
        best_map=stats.get("map"),
        last_map=stats.get("map"),
    )
