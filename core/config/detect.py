"""The object detection config as typed dataclasses: the ``detect`` section (backbone, input sizes, augmentation,
transfer and head settings), the optimizer section, the data fields every COCO-format data set has, and the run.

The recipe is ViTDet's COCO Mask R-CNN (Li, Mao, Girshick, He 2022; detectron2 ``projects/ViTDet/configs/COCO/
mask_rcnn_vitdet_{b,l}_100ep.py``), which the MAE paper's Table 4 numbers are reproduced with: reference
``mae-recipes.md`` section 7 ("Dense transfer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymae.core.config.errors import ConfigError
from anymae.core.config.resolve import resolve_model_config
from anymae.core.config.schema import ModelConfig, TrainConfig, check_lr_schedule
from anymae.core.config.segment import MODEL_PRETRAIN_ONLY
from anymae.core.config.sources import apply_preset, read_config_source
from anymae.core.config.stream import data_section
from anymae.core.config.validate import from_dict
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "DETECTOR_OPTIONS",
    "DETECT_UNSUPPORTED",
    "DetectConfig",
    "DetectHeadConfig",
    "DetectOptimConfig",
    "DetectionDataConfig",
    "load_detect_config",
]

BACKBONE_NAMES = ("fpn4", "simple_pyramid")  # anymae.core.model.detection.BACKBONES
AUGMENTS = ("lsj", "flip")
# The keywords of torchvision's FasterRCNN / MaskRCNN that ``detect.detector_options`` may set: proposal and RoI
# counts, thresholds and samplers. The modules (heads, anchor generator) are built from the ``detect`` fields.
DETECTOR_OPTIONS = (
    "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
    "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_batch_size_per_image", "rpn_positive_fraction",
    "rpn_score_thresh", "box_score_thresh", "box_nms_thresh", "box_detections_per_img", "box_fg_iou_thresh",
    "box_bg_iou_thresh", "box_batch_size_per_image", "box_positive_fraction",
)  # fmt: skip


@dataclass
class DetectHeadConfig:
    """``detect``: the backbone to start from, the detector on it and its input sizes."""

    checkpoint: str = ""  # anything model.init_from takes; empty: a random init of the config's `model` section
    modality: str = "image"  # the checkpoint's modality (checked when it is loaded); picks the data section
    backbone: str = "simple_pyramid"  # fpn4 (MAE paper A.3) | simple_pyramid (ViTDet)
    window: int = 0  # simple_pyramid: windowed attention of window x window tokens (ViTDet: 14); 0: global everywhere
    global_blocks: tuple[int, ...] | None = None  # blocks with global attention; default the last of each quarter
    min_size: int | tuple[int, ...] = 1024  # short side of the model's resize; a list draws one per batch (flip)
    max_size: int = 1024  # long side at most; LSJ's square canvas (ViTDet: 1024)
    augment: str = "lsj"  # lsj: ViTDet's large-scale jitter | flip: resize-and-flip
    lsj_scale: tuple[float, float] = (0.1, 2.0)  # LSJ's scale range of the max_size canvas (ViTDet: 0.1-2.0)
    drop_path: float = 0.1  # stochastic depth of the backbone (ViTDet ViT-B: 0.1; ViT-L: 0.4)
    layer_decay: float = 0.7  # lr scale decay^(depth + 1 - layer_id) (ViTDet ViT-B: 0.7; ViT-L: 0.8)
    out_channels: int = 256  # the pyramid's width (ViTDet / FPN: 256)
    head_channels: int = 256  # the box and mask heads' convolution width (ViTDet: 256)
    box_convs: int = 4  # the box head's convolutions ("4conv1fc": 4)
    box_fc: int = 1024  # the box head's fully connected width (1024)
    mask_convs: int = 4  # the mask head's convolutions (4)
    detector_options: dict[str, Any] = field(default_factory=dict)  # DETECTOR_OPTIONS: proposals, RoIs, thresholds

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {list(BACKBONE_NAMES)}, got {self.backbone!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {self.augment!r}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0: global attention everywhere), got {self.window}")
        if self.backbone == "fpn4" and (self.window or self.global_blocks is not None):
            raise ValueError("window and global_blocks are simple_pyramid's (ViTDet); fpn4 attends globally (A.3)")
        sizes = (self.min_size,) if isinstance(self.min_size, int) else tuple(self.min_size)
        if not sizes or min(sizes) < 1 or self.max_size < 1:
            raise ValueError(f"min_size and max_size must be positive, got {self.min_size} and {self.max_size}")
        if self.augment == "lsj" and sizes != (self.max_size,):
            raise ValueError(f"augment lsj makes max_size x max_size canvases ({self.max_size}); min_size must be "
                             f"the same single size, got {self.min_size}")  # fmt: skip
        if not 0 < self.lsj_scale[0] <= self.lsj_scale[1]:
            raise ValueError(f"lsj_scale must satisfy 0 < min <= max, got {list(self.lsj_scale)}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        for name in ("out_channels", "head_channels", "box_fc", "box_convs", "mask_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        unknown = sorted(set(self.detector_options) - set(DETECTOR_OPTIONS))
        if unknown:
            raise ValueError(f"detector_options {unknown} are not among {list(DETECTOR_OPTIONS)}")


@dataclass
class DetectionDataConfig:
    """The ``data`` fields of every COCO-format data set; a modality's detection data config subclasses it (the
    image plugin adds how the files' bands are read). Paths are relative to ``root``."""

    # "builtin:demo_detect": the generated demo set (96x96 photographs with 4 kinds of shapes); required unless
    # both splits are read from shards (data.shards, data.heldout_shards)
    root: str = ""
    train_images: str = "images/train"
    train_annotations: str = "annotations/train.json"  # COCO instances JSON
    heldout_images: str = "images/heldout"
    heldout_annotations: str = "annotations/heldout.json"
    train_subset: int | None = None  # keep the first N training images (by COCO id): few-label runs
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # one per band, after scaling; the model normalises with them
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be at least 1 image, got {self.train_subset}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean ({len(self.mean)}) and std ({len(self.std)}) need one value per band, std > 0")


@dataclass
class DetectOptimConfig:
    """AdamW of ViTDet (weight decay 0.1, betas 0.9 / 0.999; ``lr = blr * effective_batch / 256`` unless ``lr``
    is set: ViTDet's lr 1e-4 at batch 64 is blr 4e-4), per-iteration warm-up, then the trainer's half-cosine
    (ViTDet decays in two steps by 10x at 89% and 96% of training)."""

    blr: float = 4e-4
    lr: float | None = None  # absolute lr; when set, the blr rule is not applied
    min_lr: float = 0.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.25  # ViTDet: 250 iterations of 184,375

    def __post_init__(self) -> None:
        check_lr_schedule(self)


@dataclass
class DetectConfig:
    """An ``anymae detect`` run: ``detect``, ``model`` (the architecture of a random init only), ``data`` (the
    modality's detection data config), ``optim``, ``train``."""

    name: str = "run"
    preset: str | None = None
    detect: DetectHeadConfig = field(default_factory=DetectHeadConfig)
    model: ModelConfig | None = None
    data: Any = None
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# What `anymae detect` cannot honour, with the reason; any value but the default is refused when the config is read.
# Every other field of TrainConfig, DetectOptimConfig and DetectHeadConfig is honoured.
DETECT_UNSUPPORTED: dict[str, str] = {
    "train.distributed": "FSDP is a pre-training option; detectors run under DDP only: use train.distributed=ddp",
    "train.fsdp_reshard_after_forward": "an FSDP option; detectors run under DDP",
    "train.checkpoint_decoder_blocks": "a detector has no MAE decoder",
    "train.checkpoint_encoder_blocks": "the detection backbones run the encoder's blocks themselves (windowed or "
    "read block by block), not through the encoder's forward",
    "train.heldout_batches": "pre-training's held-out masked-patch loss; detect scores the whole held-out split",
    "train.knn": "pre-training's k-NN check of the features; detect reports COCO AP",
}


def load_detect_config(
    source: str | Path, overrides: Sequence[str] = (), *, registry: Registry | None = None
) -> DetectConfig:
    """Read an ``anymae detect`` config: presets and overrides as in :func:`apply_preset`; ``data`` validated
    against the detection data config of ``detect.modality``; ``model`` (the architecture of a random init) only
    without ``detect.checkpoint``; every setting the command cannot honour refused, naming its key."""
    registry = resolve_registry(registry)
    _, raw = read_config_source(source)
    raw = apply_preset(raw, overrides)
    if "detect" not in raw:
        raise ConfigError(f"config {source}: needs a 'detect' section (detect.checkpoint, detect.backbone, ...)")
    data_raw, model_raw = raw.pop("data", None), raw.pop("model", None)
    cfg = from_dict(DetectConfig, raw, "")
    head = cfg.detect
    if head.checkpoint and model_raw is not None:
        raise ConfigError(
            f"config model: the architecture is detect.checkpoint's ({head.checkpoint}); remove the model section "
            "(it describes the backbone of a random init, without detect.checkpoint)"
        )
    if not head.checkpoint:
        if model_raw is None:
            raise ConfigError("config detect.checkpoint is empty and there is no model section: give a checkpoint "
                              "to start from, or the model (architecture) of a random init")  # fmt: skip
        cfg.model = resolve_model_config(model_raw, registry)
        _refuse_pretrain_only(cfg.model, head.modality)
    _refuse_unsupported(cfg)
    try:
        modality = registry.modality(head.modality)
    except KeyError as exc:
        raise ConfigError(f"config detect.modality: {exc.args[0]}") from None
    if modality.detection_data_config is None:
        raise ConfigError(f"config detect.modality: modality {head.modality!r} provides no detection data")
    if data_raw is None:
        raise ConfigError("config data: anymae detect needs a data section (data.root and the COCO files under it)")
    cfg.data = data_section(modality.detection_data_config, data_raw, "data")  # data.shards, ... too
    return cfg


def _refuse_pretrain_only(model: ModelConfig, modality: str) -> None:
    if model.modality != modality:
        raise ConfigError(f"config model.modality={model.modality!r} but detect.modality={modality!r}")
    defaults = ModelConfig()
    for key in MODEL_PRETRAIN_ONLY:
        value = getattr(model, key)
        if value != getattr(defaults, key):
            raise ConfigError(
                f"config model.{key}={value!r} is not used by anymae detect: a detector is the encoder, a pyramid "
                "and Mask R-CNN's heads (no masking, no MAE decoder); start from a checkpoint with detect.checkpoint"
            )


def _refuse_unsupported(cfg: DetectConfig) -> None:
    defaults = TrainConfig()
    for key, reason in DETECT_UNSUPPORTED.items():
        name = key.split(".")[1]
        value = getattr(cfg.train, name)
        if value != getattr(defaults, name):
            raise ConfigError(f"config {key}={value!r} is not supported by anymae detect: {reason}")
