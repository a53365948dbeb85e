"""``anymae finetune`` / ``anymae linprobe`` from a read config: the pre-trained checkpoint its head section
names, checked against the config, then the classifier trained (:func:`train_classifier`)."""

from __future__ import annotations

from anymae.core.config import ClassifyConfig
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.train.probe import check_probe_config
from anymae.core.train.results import ClassifyResult
from anymae.core.train.task_classify import train_classifier
from anymae.core.weights.loading import load_model

__all__ = ["classify_from_checkpoint"]


def classify_from_checkpoint(
    cfg: ClassifyConfig, *, resume: str | None = None, progress: bool = True
) -> ClassifyResult:
    """Load ``cfg.head.checkpoint`` (anything :func:`load_model` reads), refuse it when its modality is not the
    config's, and train ``cfg``'s classifier on it. What solver lbfgs cannot do is refused before the checkpoint is
    read."""
    if cfg.linprobe is not None and cfg.linprobe.solver == "lbfgs":
        check_probe_config(cfg, resume=resume)
    pretrained = load_model(cfg.head.checkpoint)
    if pretrained.config["model"]["modality"] != cfg.head.modality:
        raise CheckpointError(
            f"{cfg.head.checkpoint} is a {pretrained.config['model']['modality']!r} model but the config says "
            f"{cfg.mode}.modality={cfg.head.modality!r}"
        )
    return train_classifier(cfg, pretrained, progress=progress, resume=resume)
