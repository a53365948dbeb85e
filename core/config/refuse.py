"""Settings a classifier command cannot honour, refused by name when its config is read."""

from __future__ import annotations

import dataclasses

from anymae.core.config.classify import ClassifyConfig, ClassifyOptimConfig
from anymae.core.config.errors import ConfigError
from anymae.core.config.schema import TrainConfig

__all__ = ["LBFGS_UNUSED_TRAIN", "UNSUPPORTED", "refuse_unsupported"]


# Settings a command cannot honour, with the reason; any value but the default is refused when the config is
# read. Every other field of TrainConfig and of the command's optim section is honoured by the training loop
# (tests/test_config_fields.py walks them all).
UNSUPPORTED: dict[str, dict[str, str]] = {
    "classify": {
        "train.distributed": "FSDP is a pre-training option (for the memory of ViT-H pre-training); classifiers run "
        "under DDP only: use train.distributed=ddp",
        "train.fsdp_reshard_after_forward": "an FSDP option; classifiers run under DDP",
        "train.checkpoint_decoder_blocks": "a classifier has no decoder",
        "train.heldout_batches": "pre-training's held-out masked-patch loss; classifiers evaluate the whole "
        "held-out split",
        "train.figure_samples": "pre-training's reconstruction figure; classifiers draw none",
        "train.knn": "pre-training's k-NN check of the features; classifiers report their own accuracy",
    },
    "linprobe": {
        "train.checkpoint_encoder_blocks": "the linear probe's encoder is frozen, so it keeps no activations to "
        "recompute",
    },
    "lars": {
        "optim.betas": "AdamW's betas; optim.optimizer is lars (momentum, trust_coeff)",
    },
    "adamw": {
        "optim.momentum": "LARS's momentum; optim.optimizer is adamw (betas)",
        "optim.trust_coeff": "LARS's trust coefficient; optim.optimizer is adamw",
    },
}


# train.* keys of the epoch loop, which linprobe.solver=lbfgs (one feature pass, a fit to convergence) has not.
LBFGS_UNUSED_TRAIN = ("epochs", "accum_iter", "save_every_epochs", "save_every_steps", "keep_last", "on_nonfinite",
                      "max_consecutive_skips", "log_every_steps", "eval_every_epochs", "compile", "persistent_workers",
                      "malloc_mmap_threshold")  # fmt: skip


def refuse_unsupported(cfg: ClassifyConfig, mode: str) -> None:
    """Raise :class:`ConfigError` naming the first field of ``cfg`` that ``anymae {mode}`` cannot honour."""
    defaults = {"train": TrainConfig(), "optim": ClassifyOptimConfig()}
    if mode == "linprobe" and cfg.head.solver == "lbfgs":
        for f in dataclasses.fields(ClassifyOptimConfig):
            if getattr(cfg.optim, f.name) != getattr(defaults["optim"], f.name):
                raise ConfigError(
                    f"config optim.{f.name}: linprobe.solver=lbfgs has no optimizer settings (it solves the logistic "
                    "regression exactly); remove the optim section or use linprobe.solver=sgd"
                )
        for name in LBFGS_UNUSED_TRAIN:
            if getattr(cfg.train, name) != getattr(defaults["train"], name):
                raise ConfigError(
                    f"config train.{name}: not used by linprobe.solver=lbfgs (features are computed once and the fit "
                    "runs to convergence); remove it or use linprobe.solver=sgd"
                )
    groups = ["classify", *(["linprobe"] if mode == "linprobe" else []), cfg.optim.optimizer]
    for group in groups:
        for key, reason in UNSUPPORTED[group].items():
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if value != getattr(defaults[section], name):
                raise ConfigError(f"config {key}={value!r} is not supported by anymae {mode}: {reason}")
