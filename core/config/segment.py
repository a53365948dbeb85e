"""The semantic segmentation config as typed dataclasses: the ``segment`` section (backbone, head, transfer and
test-time settings), the optimizer section, the data fields every dense data set has, and the whole run.

The recipe is the MAE paper's ADE20K transfer (appendix A.4), which follows BEiT's semantic segmentation code:
reference ``mae-recipes.md`` section 7 ("Dense transfer").
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymae.core.config.errors import ConfigError
from anymae.core.config.resolve import resolve_model_config
from anymae.core.config.schema import ModelConfig, TrainConfig, check_lr_schedule
from anymae.core.config.sources import apply_preset, read_config_source
from anymae.core.config.stream import data_section
from anymae.core.config.validate import from_dict
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "SEGMENT_UNSUPPORTED",
    "SegmentConfig",
    "SegmentHeadConfig",
    "SegmentOptimConfig",
    "SegmentationDataConfig",
    "head_options",
    "load_segment_config",
    "pair",
]


@dataclass
class SegmentHeadConfig:
    """``segment``: the backbone to start from, the dense head on it and how held-out images are segmented."""

    checkpoint: str = ""  # anything model.init_from takes; empty: a random init of the config's `model` section
    modality: str = "image"  # the checkpoint's modality (checked when it is loaded); picks the data section
    head: str = "upernet"  # a registered segmentation head (anymae plugins): linear | upernet
    layers: tuple[int, ...] | None = None  # blocks (from 0) the head reads; default: BEiT's evenly spaced 4 or the last
    channels: int | None = None  # the head's width (UperNet: 768 for ViT-B in BEiT's config); default: the head's
    aux_weight: float | None = None  # the auxiliary loss weight (UperNet's FCN head: 0.4); default: the head's
    crop: int | tuple[int, int] | None = None  # training crop and encoder input (H, W); default: the model's img_size
    drop_path: float = 0.1  # stochastic depth of the backbone (BEiT ADE20K ViT-B: 0.1)
    layer_decay: float = 0.65  # lr scale decay^(depth + 1 - layer_id) (BEiT / MAE ADE20K: 0.65)
    # BEiT's relative position bias, turned on for transfer and zero-initialised (MAE appendix A.4). Refused when
    # true: timm's Attention (the encoder's blocks) has no bias input, and timm's Beit blocks would change every
    # parameter name of the encoder; the absolute position table is resampled to the crop instead.
    rel_pos_bias: bool = False
    eval_crop: int | tuple[int, int] | None = None  # sliding-window size; default: the crop (mmseg: 512)
    eval_stride: int | tuple[int, int] | None = None  # default: 2/3 of eval_crop, rounded down (mmseg: 341 for 512)
    eval_flip: bool = False  # average the softmax of each held-out image and its mirror
    eval_scales: tuple[float, ...] = (1.0,)  # ... and of the image resized by each scale (mmseg aug_test: 0.5-1.75)

    def __post_init__(self) -> None:
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"layers must be block indices >= 0, got {list(self.layers)}")
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"channels must be at least 1, got {self.channels}")
        if self.aux_weight is not None and self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        for name in ("crop", "eval_crop", "eval_stride"):
            size = pair(getattr(self, name))
            if size is not None and min(size) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.eval_scales or min(self.eval_scales) <= 0:
            raise ValueError(f"eval_scales must be one or more positive factors, got {list(self.eval_scales)}")


def pair(size: int | tuple[int, ...] | None) -> tuple[int, int] | None:
    """An int or (H, W) size -> (H, W); None stays None."""
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"a size is one int or [H, W], got {list(size)}")
    return int(size[0]), int(size[1])


@dataclass
class SegmentationDataConfig:
    """The ``data`` fields of every segmentation data set; a modality's segmentation data config subclasses it
    (the image plugin adds the root, normalisation and mmseg's augmentation)."""

    num_classes: int = 0  # required: the classes of the masks (ADE20K: 150 after reduce_zero_label)
    ignore_index: int = 255  # mask value never counted, nor trained on (mmseg's 255)
    reduce_zero_label: bool = False  # ADE20K: 0 ("other") -> ignored, 1..K -> 0..K-1
    classes: tuple[str, ...] | None = None  # class names, index order (per-class IoU rows); default: "0".."K-1"
    train_split: str = "training"  # ADE20K layout: images/<split>/, annotations/<split>/
    heldout_split: str = "validation"
    train_list: str | None = None  # a list file of "image-path mask-path" lines, used instead of train_split
    heldout_list: str | None = None  # ... instead of heldout_split

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes is required: the number of classes (at least 2), got {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is one of the classes 0..{self.num_classes - 1}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"classes names {len(self.classes)} classes but num_classes is {self.num_classes}")


@dataclass
class SegmentOptimConfig:
    """AdamW of the dense transfer (BEiT / MAE ADE20K: weight decay 0.05, betas 0.9 / 0.999); ``lr = blr *
    effective_batch / 256`` unless ``lr`` is set; per-iteration warm-up, then the trainer's half-cosine (mmseg's
    BEiT config decays polynomially with power 1.0: a straight line)."""

    blr: float = 1e-4
    lr: float | None = None  # absolute lr; when set, the blr rule is not applied
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1

    def __post_init__(self) -> None:
        check_lr_schedule(self)


@dataclass
class SegmentConfig:
    """An ``anymae segment`` run: ``segment``, ``model`` (the architecture of a random init only), ``data`` (the
    modality's segmentation data config), ``optim``, ``train``."""

    name: str = "run"
    preset: str | None = None
    segment: SegmentHeadConfig = field(default_factory=SegmentHeadConfig)
    # The backbone of a random init (without segment.checkpoint); with a checkpoint, what it sets must agree with
    # the checkpoint's architecture (tokenizer.img_size aside: the encoder runs at segment.crop).
    model: ModelConfig | None = None
    data: Any = None
    optim: SegmentOptimConfig = field(default_factory=SegmentOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# What `anymae segment` cannot honour, with the reason; any value but the default is refused when the config is
# read. Every other field of TrainConfig, SegmentOptimConfig and SegmentHeadConfig is honoured
# (tests/test_segment_config.py walks them all).
SEGMENT_UNSUPPORTED: dict[str, str] = {
    "train.distributed": "FSDP is a pre-training option (for the memory of ViT-H pre-training); segmenters run "
    "under DDP only: use train.distributed=ddp",
    "train.fsdp_reshard_after_forward": "an FSDP option; segmenters run under DDP",
    "train.checkpoint_decoder_blocks": "a segmenter has no MAE decoder",
    "train.heldout_batches": "pre-training's held-out masked-patch loss; segment scores the whole held-out split",
    "train.knn": "pre-training's k-NN check of the features; segment reports its own mIoU",
    "segment.rel_pos_bias": "timm's Attention (the encoder's blocks) takes no relative position bias, and timm's "
    "Beit blocks would rename every parameter of the encoder; the absolute position table is resampled to the "
    "crop instead",
}
# model.* keys of pre-training that a segmenter (encoder + head, no masking, no decoder) does not have.
MODEL_PRETRAIN_ONLY = ("masking", "masking_options", "mask_ratio", "norm_pix_loss", "target", "decoder",
                       "decoder_options", "pred_masked_only", "decoder_embed_dim", "decoder_depth",
                       "decoder_num_heads", "decoder_mlp_ratio", "init_from", "init_bands")  # fmt: skip


def load_segment_config(
    source: str | Path, overrides: Sequence[str] = (), *, registry: Registry | None = None
) -> SegmentConfig:
    """Read an ``anymae segment`` config: presets and overrides as in :func:`apply_preset`; ``data`` validated
    against the segmentation data config of ``segment.modality``; ``model`` (the architecture of a random init)
    only without ``segment.checkpoint``; every setting the command cannot honour refused, naming its key."""
    registry = resolve_registry(registry)
    _, raw = read_config_source(source)
    raw = apply_preset(raw, overrides)
    if "segment" not in raw:
        raise ConfigError(f"config {source}: needs a 'segment' section (segment.checkpoint, segment.head, ...)")
    data_raw, model_raw = raw.pop("data", None), raw.pop("model", None)
    cfg = from_dict(SegmentConfig, raw, "")
    head = cfg.segment
    if not head.checkpoint and model_raw is None:
        raise ConfigError("config segment.checkpoint is empty and there is no model section: give a checkpoint "
                          "to start from, or the model (architecture) of a random init")  # fmt: skip
    if model_raw is not None:
        cfg.model = resolve_model_config(model_raw, registry)
        _refuse_pretrain_only(cfg.model, head.modality)
    _refuse_unsupported(cfg)
    try:
        builder = registry.segmentation_head(head.head)
        modality = registry.modality(head.modality)
    except KeyError as exc:
        raise ConfigError(f"config segment: {exc.args[0]}") from None
    _check_head_options(builder, head)
    data_config = modality.segmentation_data_config
    if data_config is None:
        raise ConfigError(f"config segment.modality: modality {head.modality!r} provides no segmentation data")
    cfg.data = data_section(data_config, data_raw, "data")  # the stream keys too (data.shards, ...)
    return cfg


def _refuse_pretrain_only(model: ModelConfig, modality: str) -> None:
    if model.modality != modality:
        raise ConfigError(f"config model.modality={model.modality!r} but segment.modality={modality!r}")
    defaults = ModelConfig()
    for key in MODEL_PRETRAIN_ONLY:
        value = getattr(model, key)
        if value != getattr(defaults, key):
            raise ConfigError(
                f"config model.{key}={value!r} is not used by anymae segment: a segmenter is the encoder and a "
                "dense head (no masking, no MAE decoder); start from a checkpoint with segment.checkpoint"
            )


def _refuse_unsupported(cfg: SegmentConfig) -> None:
    defaults = {"train": TrainConfig(), "segment": SegmentHeadConfig()}
    for key, reason in SEGMENT_UNSUPPORTED.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != getattr(defaults[section], name):
            raise ConfigError(f"config {key}={value!r} is not supported by anymae segment: {reason}")


def _check_head_options(builder: Any, head: SegmentHeadConfig) -> None:
    """``segment.channels`` / ``segment.aux_weight`` are the head builder's keywords of those names: refused for
    a head that has none."""
    accepted = inspect.signature(builder).parameters
    for key in ("channels", "aux_weight"):
        if getattr(head, key) is not None and key not in accepted:
            raise ConfigError(f"config segment.{key}: the {head.head!r} head has no such option")


def head_options(head: SegmentHeadConfig) -> dict[str, Any]:
    """The head builder's options the config sets (``channels``, ``aux_weight``)."""
    return {f.name: getattr(head, f.name) for f in dataclasses.fields(head)
            if f.name in ("channels", "aux_weight") and getattr(head, f.name) is not None}  # fmt: skip
