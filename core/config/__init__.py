"""Configs are data: YAML validated into typed dataclasses, with ``key.sub=value`` overrides.

The core sections (``model``, ``optim``, ``train``) are dataclasses here; the modality-specific
sections (``model.tokenizer`` and ``data``) are validated against the dataclasses the modality declares.
Every mistake is reported before any work starts, naming the key and, for typos, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from anymae.core.model.decoder import DecoderArgs
from anymae.core.model.masking import MaskingArgs
from anymae.plugins.manager import COMPOSITE, Registry, resolve_registry

__all__ = [
    "COMPOSITE",
    "ClassifyConfig",
    "ClassifyOptimConfig",
    "Config",
    "ConfigError",
    "FinetuneConfig",
    "LinprobeConfig",
    "ModelConfig",
    "OptimConfig",
    "PartConfig",
    "TrainConfig",
    "bundled_configs",
    "config_to_dict",
    "from_dict",
    "load_classify_config",
    "load_config",
    "read_config_source",
    "resolve_config",
    "resolve_model_config",
    "resolve_part_data",
]


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an out-of-range value."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; configs mean the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


@dataclass
class ModelConfig:
    """The MAE architecture; the defaults are ``mae_vit_base_patch16`` (reference section 1)."""

    modality: str = "image"
    tokenizer: Any = field(default_factory=dict)  # validated against the modality's tokenizer_config
    masking: str = "random"  # a registered masking strategy
    masking_options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of that strategy
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False  # the official code's default; the paper's configs turn it on
    target: str = "pixels"  # a registered target; norm_pix_loss: true is the official spelling of norm_pix
    cls_token: bool = True  # False: no prefix token (VideoMAE)
    decoder: str = "global"  # a registered decoder
    decoder_options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of that decoder
    pred_masked_only: bool = False  # the decoder head on removed tokens only (VideoMAE); the same loss
    fused_attn: bool = True  # scaled_dot_product_attention; False: timm's explicit softmax(QK^T)V
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # official MAE; Hugging Face ViTMAE uses 1e-12
    # pretrain: start from this checkpoint's weights (anything load_model reads), adapted to new channels, input
    # size and patch size; optimizer, schedule and epochs start fresh (anymae.core.weights.init_from)
    init_from: str | None = None
    init_bands: tuple[int, ...] | None = None  # init_from: the file's input channel for each model channel
    # modality: composite: one model over several registered modalities, each a named part with its own
    # tokenizer, masking, target and decoder (PartConfig); the encoder and the widths above are shared.
    parts: dict[str, Any] = field(default_factory=dict)
    modality_dropout: float = 0.0  # composite: share of training samples that lose one part (chosen at random)
    joint_decoder: bool = False  # composite: one decoder over every part's tokens (CAV-MAE) instead of each part's own
    part_depth: int = 0  # composite: blocks of each part's own before the shared `depth` (CAV-MAE: 11, then 1 shared)

    def __post_init__(self) -> None:
        if self.part_depth < 0:
            raise ValueError(f"part_depth must be >= 0, got {self.part_depth}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.init_bands is not None and (self.init_from is None or not self.init_bands or min(self.init_bands) < 0):
            raise ValueError(f"init_bands must be channel indices >= 0 of init_from's file, got {self.init_bands}")
        if self.norm_pix_loss and self.target not in ("pixels", "norm_pix"):
            raise ValueError(f"norm_pix_loss: true means target norm_pix, but target is {self.target!r}")
        if self.norm_pix_loss or self.target == "norm_pix":
            self.norm_pix_loss, self.target = True, "norm_pix"
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.decoder_depth < 0:
            raise ValueError(f"decoder_depth must be >= 0, got {self.decoder_depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )


@dataclass
class PartConfig:
    """One part of a composite model (``model.parts.<name>``): a registered modality with its own tokenizer,
    masking, target and decoder. The defaults are those of :class:`ModelConfig`."""

    modality: str = ""  # a registered modality; default: the part's name
    tokenizer: Any = field(default_factory=dict)  # validated against that modality's tokenizer_config
    masking: str = "random"
    masking_options: dict[str, Any] = field(default_factory=dict)
    mask_ratio: float = 0.75
    target: str = "pixels"
    decoder: str = "global"  # the part's own decoder (decoder_embed_dim, depth and heads are model.*'s)
    decoder_options: dict[str, Any] = field(default_factory=dict)
    pred_masked_only: bool = False
    loss_weight: float = 1.0  # the total loss is the sum of loss_weight x the part's masked-patch loss

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {self.loss_weight}")


def _check_lr_schedule(cfg: OptimConfig | ClassifyOptimConfig) -> None:
    """The value checks both optimizer sections share: the lr rule, the schedule and the decay."""
    if cfg.blr <= 0 or (cfg.lr is not None and cfg.lr <= 0):
        raise ValueError("blr and lr must be positive")
    if cfg.warmup_epochs < 0 or cfg.min_lr < 0 or cfg.weight_decay < 0:
        raise ValueError("warmup_epochs, min_lr and weight_decay must be >= 0")


@dataclass
class OptimConfig:
    """AdamW with the paper's pre-training values (reference section 2)."""

    blr: float = 1.5e-4  # base lr: lr = blr * effective_batch / 256
    lr: float | None = None  # absolute lr; when set, the blr rule is not applied
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40
    fused: bool = False  # torch's fused AdamW kernel (one kernel for all parameters)
    step_in_backward: bool = False  # update each parameter inside backward and free its gradient (less memory)

    def __post_init__(self) -> None:
        _check_lr_schedule(self)


@dataclass
class TrainConfig:
    """The training loop. ``batch_size`` is per device; effective batch = batch_size x accum_iter x devices."""

    epochs: int = 800
    batch_size: int = 64
    accum_iter: int = 1
    num_workers: int = 10
    pin_memory: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 adds a GradScaler
    compile: bool = False  # torch.compile each transformer block
    distributed: Literal["ddp", "fsdp"] = "ddp"  # pretrain under torchrun; fsdp: FSDP2, each block sharded (ViT-H)
    fsdp_reshard_after_forward: bool = True  # fsdp: free gathered block weights after forward (False: keep, faster)
    checkpoint_decoder_blocks: int = 0  # recompute the first N decoder blocks in backward (less memory)
    checkpoint_encoder_blocks: int = 0  # the same for the first N encoder blocks (they see the visible tokens only)
    malloc_mmap_threshold: int | None = None  # Linux/glibc CPU runs: e.g. 65536 returns freed memory at once
    persistent_workers: bool = True  # keep DataLoader workers between epochs (when num_workers > 0)
    prefetch_factor: int | None = None  # batches prefetched per worker (PyTorch's default 2 when None)
    output_dir: str = "runs"
    run_name: str | None = None  # default: the config's name
    save_every_epochs: int = 20
    save_every_steps: int = 0  # also checkpoint every N optimizer steps inside epochs (0: off)
    keep_last: int = 0  # keep only the newest N checkpoints of the run (0: keep all)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # skip: drop that step on every rank
    max_consecutive_skips: int = 10  # with on_nonfinite=skip, stop after this many skipped steps in a row
    log_every_steps: int = 10
    max_bad_fraction: float = 0.01  # stop cleanly when more than this fraction of samples fail to load
    eval_every_epochs: int = 1  # held-out check every N epochs and after the last (loss + figure, or accuracy)
    heldout_batches: int = 4  # batches of the held-out split for the masked-patch loss
    knn: bool = True  # pretrain: each check also scores the features by k-NN when the data has labels
    figure_samples: int = 4  # held-out samples drawn in the reconstruction figure

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_iter", "save_every_epochs", "log_every_steps", "eval_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.heldout_batches < 0 or self.figure_samples < 0:
            raise ValueError("num_workers, heldout_batches and figure_samples must be >= 0")
        for name in ("save_every_steps", "keep_last", "checkpoint_decoder_blocks", "checkpoint_encoder_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be at least 1, got {self.max_consecutive_skips}")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be at least 1, got {self.prefetch_factor}")
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ValueError("prefetch_factor is the batches prefetched by each worker: it needs num_workers > 0")
        if not self.fsdp_reshard_after_forward and self.distributed != "fsdp":
            raise ValueError("fsdp_reshard_after_forward: false applies to distributed: fsdp only")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class Config:
    """A whole run: ``model``, ``data`` (the modality's data_config), ``optim``, ``train``."""

    name: str = "run"
    preset: str | None = None  # the name of the applied entry of the config's ``presets`` (e.g. crops)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LinprobeConfig:
    """``linprobe``: a linear classifier on frozen features of a pre-trained encoder (reference section 2)."""

    checkpoint: str = ""  # the pre-trained MAE (anymae .pt/.safetensors, official .pth, HF ViTMAE folder)
    modality: str = "image"  # the checkpoint's modality (checked when it is loaded); picks the data section
    num_classes: int | None = None  # default: the number of classes found in the training split
    global_pool: bool = False  # official linear probe: the CLS token after the final LayerNorm
    tokenizer: dict[str, Any] = field(default_factory=dict)  # overrides of the checkpoint's model.tokenizer
    init_bands: tuple[int, ...] | None = None  # the checkpoint's input channel for each model channel (N -> M bands)
    eval_crop_pct: float = 0.875  # eval: resize the shorter side to size / crop_pct, centre crop
    view_reduce: Literal["logits", "softmax"] = "logits"  # multi-view eval: average logits, or softmax (VideoMAE)
    balanced_sampling: bool = False  # draw training items with the dataset's sample_weights() (AudioMAE AS-2M)
    epoch_samples: int | None = None  # balanced sampling: draws per epoch (AudioMAE: 200000); default: the set's size
    eval_every_epochs: int = 1  # evaluate (and pick the best checkpoint) every N epochs and after the last
    # sgd: the training loop with optim.* (the paper's LARS recipe); lbfgs: features computed once, then a full-batch
    # L-BFGS logistic regression solved to convergence (anymae.core.train.probe; for small data sets).
    solver: Literal["sgd", "lbfgs"] = "sgd"
    l2: tuple[float, ...] | None = None  # lbfgs: L2 strengths tried (default: 1e-5 ... 1); one value: no search
    l2_val_fraction: float | None = None  # lbfgs: share of the training split that picks l2 (default 0.2)
    max_iter: int | None = None  # lbfgs: L-BFGS iterations per fit (default 1000)
    parts: list[str] | None = None  # modality: composite: the checkpoint's parts the classifier reads (default: all)

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.init_bands is not None and (not self.init_bands or min(self.init_bands) < 0):
            raise ValueError(f"init_bands must be channel indices >= 0 of the checkpoint, got {list(self.init_bands)}")
        lbfgs_only = {"l2": self.l2, "l2_val_fraction": self.l2_val_fraction, "max_iter": self.max_iter}
        sgd_only = {"balanced_sampling": self.balanced_sampling, "epoch_samples": self.epoch_samples}
        for key, value in (lbfgs_only if self.solver == "sgd" else sgd_only).items():
            if value not in (None, False):
                other = "lbfgs" if self.solver == "sgd" else "sgd"
                raise ValueError(f"{key}={value!r} is an option of solver {other}, but solver is {self.solver!r}")
        if self.l2 is not None and (not self.l2 or min(self.l2) < 0):
            raise ValueError(f"l2 must be one or more values >= 0, got {self.l2}")
        if self.l2_val_fraction is not None and not 0 < self.l2_val_fraction < 1:
            raise ValueError(f"l2_val_fraction must be in (0, 1), got {self.l2_val_fraction}")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")
        if not 0 < self.eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
        if self.epoch_samples is not None and not self.balanced_sampling:
            raise ValueError("epoch_samples sets the draws of balanced_sampling; turn balanced_sampling on or unset it")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be at least 1, got {self.epoch_samples}")


@dataclass
class FinetuneConfig(LinprobeConfig):
    """``finetune``: end-to-end fine-tuning (reference section 2, Table 9 and the released recipe)."""

    global_pool: bool = True  # average of the patch tokens + fc_norm; False: CLS after the final norm
    drop_path: float = 0.1  # stochastic depth, linearly increasing over the blocks
    layer_decay: float = 0.75  # lr scale decay^(depth + 1 - layer_id)
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec
    reprob: float = 0.25  # random erasing probability
    remode: Literal["pixel", "rand", "const"] = "pixel"
    recount: int = 1
    head_init_std: float = 2e-5  # trunc-normal std of the head weight (official)
    token_masking: str | None = None  # drop tokens in training with this masking strategy (AudioMAE: time_frequency)
    token_mask_ratio: float = 0.0  # ... at this ratio (AudioMAE: 0.2); evaluation always sees every token

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver != "sgd":
            raise ValueError(f"solver={self.solver!r} is a linprobe option; fine-tuning trains with optim.*")
        if not 0 <= self.token_mask_ratio < 1:
            raise ValueError(f"token_mask_ratio must be in [0, 1), got {self.token_mask_ratio}")
        if self.token_mask_ratio > 0 and not self.token_masking:
            raise ValueError("token_mask_ratio > 0 needs token_masking (a registered masking strategy, e.g. random)")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.drop_path < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.reprob <= 1:
            raise ValueError("drop_path and label_smoothing must be in [0, 1), reprob in [0, 1]")


@dataclass
class ClassifyOptimConfig:
    """Optimizer of fine-tuning (AdamW) or linear probing (LARS); ``lr = blr * effective_batch / 256``."""

    optimizer: Literal["adamw", "lars"] = "adamw"
    blr: float = 1e-3
    lr: float | None = None  # absolute lr; when set, the blr rule is not applied
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    momentum: float = 0.9  # LARS only
    trust_coeff: float = 0.001  # LARS only
    warmup_epochs: float = 5

    def __post_init__(self) -> None:
        _check_lr_schedule(self)


@dataclass
class ClassifyConfig:
    """A fine-tuning (``finetune`` section) or linear-probing (``linprobe`` section) run."""

    name: str = "run"
    preset: str | None = None  # the name of the applied entry of the config's ``presets`` (e.g. paper, release)
    finetune: FinetuneConfig | None = None
    linprobe: LinprobeConfig | None = None
    data: Any = None  # the modality's data_config (of the checkpoint's modality)
    optim: ClassifyOptimConfig = field(default_factory=ClassifyOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def mode(self) -> str:
        return "finetune" if self.finetune is not None else "linprobe"

    @property
    def head(self) -> LinprobeConfig:
        """The active section (``finetune`` or ``linprobe``)."""
        return self.finetune if self.finetune is not None else self.linprobe  # type: ignore[return-value]


# --- validation ---------------------------------------------------------------------------------------
def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Validate ``raw`` (a mapping) into dataclass ``cls``; ``where`` is the dotted key for messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where or 'file'} must be a mapping, got {type(raw).__name__}: {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            match = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} Valid keys in {where or 'the top level'}: {', '.join(fields)}"
            )
        kwargs[key] = _check(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config {where or 'file'}: {exc}") from None


def _check(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config {key}: {value!r} matches none of {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config {key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config {key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple or tp is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if not args:
                return tuple(value)
            if len(value) != len(args):
                raise ConfigError(f"config {key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_check(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True)))
    elif origin is list or tp is list:
        if isinstance(value, (list, tuple)):
            return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")
    raise ConfigError(f"config {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# --- sources, overrides, resolution ----------------------------------------------------------------
def bundled_configs() -> dict[str, str]:
    """Name -> first comment line of every YAML config shipped in ``anymae.configs``."""
    out = {}
    for entry in sorted(resources.files("anymae.configs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text().splitlines()[0] if entry.read_text() else ""
            out[entry.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return out


def read_config_source(source: str | Path) -> tuple[str, dict[str, Any]]:
    """A path to a YAML file, or the name of a bundled config -> (name, raw mapping)."""
    path = Path(source)
    if path.is_file():
        text, name = path.read_text(), path.stem
    else:
        bundled = resources.files("anymae.configs") / f"{source}.yaml"
        if not bundled.is_file():
            names = list(bundled_configs())
            match = difflib.get_close_matches(str(source), names, n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ConfigError(
                f"config {str(source)!r} is neither a file nor a bundled config{hint}; bundled: {', '.join(names)}"
            )
        text, name = bundled.read_text(), str(source)
    try:
        raw = _yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source}: the top level must be a mapping")
    raw.setdefault("name", name)
    return name, raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _yaml(text) if text else ""
    return raw


def resolve_config(raw: dict[str, Any], registry: Registry | None = None) -> Config:
    """Validate a raw mapping into a :class:`Config`, including the modality's own sections."""
    registry = resolve_registry(registry)
    raw = dict(raw)
    model_raw = raw.pop("model", None)
    data_raw = raw.pop("data", None)
    cfg = from_dict(Config, raw, "")
    cfg.model = resolve_model_config(model_raw, registry)
    if cfg.model.modality == COMPOSITE:
        cfg.data = resolve_part_data(cfg.model, data_raw, registry)
    else:
        cfg.data = from_dict(registry.modality(cfg.model.modality).data_config, data_raw, "data")
    return cfg


def resolve_part_data(model: ModelConfig, raw: Any, registry: Registry) -> dict[str, Any]:
    """A composite's ``data``: one section per part (``data.<part>``), each its modality's data_config."""
    raw = dict(raw or {})
    for key in raw:
        if key not in model.parts:
            raise ConfigError(
                f"unknown config key 'data.{key}': a composite's data has one section per part "
                f"({', '.join(model.parts)})"
            )
    return {
        name: from_dict(registry.modality(part.modality).data_config, raw.get(name), f"data.{name}")
        for name, part in model.parts.items()
    }


def resolve_model_config(raw: Any, registry: Registry | None = None) -> ModelConfig:
    """The ``model`` section as plain data (e.g. from a checkpoint) -> a validated ModelConfig."""
    registry = resolve_registry(registry)
    raw = dict(raw or {})
    tokenizer_raw = raw.pop("tokenizer", None)
    cfg = from_dict(ModelConfig, raw, "model")
    if cfg.modality == COMPOSITE:
        return _resolve_composite(cfg, raw, tokenizer_raw, registry)
    for key in ("parts", "modality_dropout", "joint_decoder", "part_depth"):
        if getattr(cfg, key):
            raise ConfigError(f"config model.{key} is for model.modality: {COMPOSITE}; this model is {cfg.modality!r}")
    try:
        modality = registry.modality(cfg.modality)
        registry.masking_strategy(cfg.masking)
        registry.target(cfg.target)
        decoder = registry.decoder(cfg.decoder)
    except KeyError as exc:
        raise ConfigError(f"config model: {exc.args[0]}") from None
    check_decoder_options(decoder, cfg.decoder_options)
    check_masking_options(registry.masking_strategy(cfg.masking), cfg.masking_options)
    cfg.tokenizer = from_dict(modality.tokenizer_config, tokenizer_raw, "model.tokenizer")
    return cfg


# ModelConfig keys that a composite sets per part (model.parts.<name>.<key>) or does not support.
_PER_PART = ("masking", "masking_options", "mask_ratio", "norm_pix_loss", "target", "decoder", "decoder_options",
             "pred_masked_only")  # fmt: skip
_NOT_COMPOSITE = {
    "init_from": "starting a composite from another checkpoint's weights is not supported yet",
    "init_bands": "starting a composite from another checkpoint's weights is not supported yet",
}


def _resolve_composite(cfg: ModelConfig, raw: dict[str, Any], tokenizer_raw: Any, registry: Registry) -> ModelConfig:
    """``model.modality: composite``: validate ``model.parts`` (at least two, each a registered modality with its
    own tokenizer, masking, target and decoder) and refuse the single-modality keys, naming them."""
    if tokenizer_raw:
        raise ConfigError("config model.tokenizer: a composite model has one per part (model.parts.<name>.tokenizer)")
    defaults = ModelConfig()
    for key in _PER_PART:  # a saved config holds every key at its default
        if key in raw and raw[key] != getattr(defaults, key):
            raise ConfigError(f"config model.{key}: a composite model sets it per part (model.parts.<name>.{key})")
    for key, reason in _NOT_COMPOSITE.items():
        if raw.get(key) is not None:
            raise ConfigError(f"config model.{key}: {reason}")
    if len(cfg.parts) < 2:
        raise ConfigError(f"config model.parts: a composite model needs at least two parts, got {list(cfg.parts)}")
    parts = {}
    for name, part_raw in cfg.parts.items():
        where = f"model.parts.{name}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ConfigError(f"config {where}: a part name must be an identifier (letters, digits, _)")
        if isinstance(part_raw, PartConfig):  # already validated (a config resolved twice)
            part_raw = config_to_dict(part_raw)
        part_raw = dict(part_raw or {}) if isinstance(part_raw, dict) or part_raw is None else part_raw
        tokenizer = part_raw.pop("tokenizer", None) if isinstance(part_raw, dict) else None
        part = from_dict(PartConfig, part_raw, where)
        part.modality = part.modality or str(name)
        if part.modality == COMPOSITE:
            raise ConfigError(f"config {where}.modality: a part cannot itself be a composite")
        try:
            modality = registry.modality(part.modality)
            registry.target(part.target)
            decoder = registry.decoder(part.decoder)
            strategy = registry.masking_strategy(part.masking)
        except KeyError as exc:
            raise ConfigError(f"config {where}: {exc.args[0]}") from None
        _check_options(decoder, part.decoder_options, f"{where}.decoder_options", "decoder", DECODER_ARGUMENTS)
        _check_options(strategy, part.masking_options, f"{where}.masking_options", "masking strategy",
                       MASKING_ARGUMENTS)  # fmt: skip
        part.tokenizer = from_dict(modality.tokenizer_config, tokenizer, f"{where}.tokenizer")
        if cfg.joint_decoder:
            for key in ("decoder", "decoder_options", "pred_masked_only"):
                if getattr(part, key) != getattr(PartConfig(), key):
                    raise ConfigError(f"config {where}.{key}: the part has no decoder of its own with "
                                      "model.joint_decoder: true")  # fmt: skip
        parts[str(name)] = part
    cfg.parts = parts
    return cfg


# What the core passes to every decoder builder; ``model.decoder_options`` may not set these.
DECODER_ARGUMENTS = tuple(DecoderArgs.__annotations__)


# What the core passes to every masking strategy; ``model.masking_options`` may not set these.
MASKING_ARGUMENTS = tuple(MaskingArgs.__annotations__)


def check_decoder_options(builder: Any, options: dict[str, Any]) -> None:
    """Fail on a ``model.decoder_options`` key the decoder builder does not take, naming the key."""
    _check_options(builder, options, "model.decoder_options", "decoder", DECODER_ARGUMENTS)


def check_masking_options(strategy: Any, options: dict[str, Any]) -> None:
    """Fail on a ``model.masking_options`` key the masking strategy does not take, naming the key."""
    _check_options(strategy, options, "model.masking_options", "masking strategy", MASKING_ARGUMENTS)


def _core_arguments(param: inspect.Parameter) -> bool:
    """Whether a ``**`` parameter receives only the core's arguments (``**args: Unpack[DecoderArgs]``), so that the
    builder's options are its named keywords."""
    return str(param.annotation).startswith(("Unpack[", "typing.Unpack["))


def _check_options(function: Any, options: dict[str, Any], where: str, what: str, reserved: Sequence[str]) -> None:
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD and not _core_arguments(p) for p in params.values()):
        accepted = None  # the function takes any keyword; it reports unknown ones itself
    else:
        accepted = [n for n, p in params.items() if n not in reserved and p.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in options:
        if key in reserved:
            raise ConfigError(f"config {where}.{key}: set by the core from model.*, not an option")
        if accepted is not None and key not in accepted:
            match = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(
                f"unknown config key '{where}.{key}'{hint} The {what}'s options: {', '.join(accepted) or 'none'}"
            )


def load_config(
    source: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> Config | ClassifyConfig:
    """Read a YAML file or bundled config, apply overrides and validate everything. A config with a
    ``finetune`` or ``linprobe`` section is a :class:`ClassifyConfig` (see :func:`load_classify_config`)."""
    _, raw = read_config_source(source)
    if any(s in raw for s in CLASSIFY_SECTIONS):
        return load_classify_config(source, overrides, registry=registry)
    return resolve_config(apply_preset(raw, overrides), registry)


def apply_preset(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``overrides`` to a raw config: ``preset: NAME`` (in the file or as ``preset=NAME``) first applies the
    entry NAME of the config's ``presets`` section (a mapping of ``key.sub: value`` overrides), then the other
    overrides. A config written by a run keeps the applied preset's name and has no ``presets`` section: it is
    taken as it is. A preset the config does not define is refused, naming the ones it has."""
    chosen = [o for o in overrides if o.startswith("preset=")]
    raw = apply_overrides(raw, chosen)
    presets = raw.pop("presets", None) or {}
    preset = raw.get("preset")
    if preset is not None and (presets or chosen):
        if preset not in presets:
            raise ConfigError(
                f"config preset {preset!r} is not one of the config's presets: {', '.join(presets) or 'none'}"
            )
        apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in presets[preset].items()])
    return apply_overrides(raw, [o for o in overrides if not o.startswith("preset=")])


CLASSIFY_SECTIONS = ("finetune", "linprobe")


def load_classify_config(
    source: str | Path, overrides: Sequence[str] = (), *, mode: str | None = None, registry: Registry | None = None
) -> ClassifyConfig:
    """Read a fine-tuning / linear-probing config: it has a ``finetune`` or a ``linprobe`` section (``mode``,
    when given, says which one it must be). Presets and overrides as in :func:`apply_preset`; ``data`` is
    validated against the data_config of ``<section>.modality``."""
    registry = resolve_registry(registry)
    _, raw = read_config_source(source)
    raw = apply_preset(raw, overrides)
    found = [s for s in CLASSIFY_SECTIONS if s in raw]
    if len(found) != 1 or (mode is not None and found != [mode]):
        want = f"a {mode!r} section" if mode else "one of the sections 'finetune' or 'linprobe'"
        raise ConfigError(f"config {source}: needs {want}; it has {found or 'neither'}")
    mode = found[0]
    data_raw = raw.pop("data", None)
    if isinstance(raw[mode], dict) and "eval_every_epochs" in raw[mode]:
        raise ConfigError(f"config {mode}.eval_every_epochs is now train.eval_every_epochs (one key for every command)")
    head = from_dict(FinetuneConfig if mode == "finetune" else LinprobeConfig, raw.pop(mode), mode)
    cfg = from_dict(ClassifyConfig, raw, "")
    setattr(cfg, mode, head)
    if not head.checkpoint:
        raise ConfigError(f"config {mode}.checkpoint is required: the pre-trained checkpoint to start from")
    refuse_unsupported(cfg, mode)
    if head.modality == COMPOSITE:  # the parts, and so the data sections, are the checkpoint's
        cfg.data = _composite_classify_data(cfg, mode, data_raw, registry)
        return cfg
    if head.parts is not None:
        raise ConfigError(f"config {mode}.parts is for {mode}.modality: {COMPOSITE}; this is {head.modality!r}")
    try:
        modality = registry.modality(head.modality)
    except KeyError as exc:
        raise ConfigError(f"config {mode}.modality: {exc.args[0]}") from None
    cfg.data = from_dict(modality.data_config, data_raw, "data")
    if getattr(head, "token_masking", None):
        try:
            registry.masking_strategy(head.token_masking)
        except KeyError as exc:
            raise ConfigError(f"config {mode}.token_masking: {exc.args[0]}") from None
    return cfg


def _composite_classify_data(cfg: ClassifyConfig, mode: str, data_raw: Any, registry: Registry) -> dict[str, Any]:
    """A classifier over a composite checkpoint's parts: ``data.<part>`` for each of ``<mode>.parts`` (default:
    all), validated against the parts the checkpoint declares; what a composite input cannot take is refused."""
    from anymae.core.io.checkpoint import read_payload

    head = cfg.head
    payload = read_payload(Path(head.checkpoint))
    model_raw = payload.get("config", {}).get("model", {}) if isinstance(payload, dict) else {}
    if model_raw.get("modality") != COMPOSITE:
        raise ConfigError(f"config {mode}.modality: {COMPOSITE}, but {head.checkpoint} is not a composite model")
    model = resolve_model_config(model_raw, registry)
    names = list(head.parts or model.parts)
    unknown = [name for name in names if name not in model.parts]
    if unknown:
        raise ConfigError(
            f"config {mode}.parts: {unknown} are not parts of {head.checkpoint} ({', '.join(model.parts)})"
        )
    refused = {"tokenizer": bool(head.tokenizer), "init_bands": head.init_bands is not None}
    if isinstance(head, FinetuneConfig):
        refused.update(mixup=head.mixup > 0, cutmix=head.cutmix > 0, token_masking=head.token_masking is not None)
    for key, bad in refused.items():
        if bad:
            raise ConfigError(f"config {mode}.{key}: not supported for composite models yet")
    model.parts = {name: model.parts[name] for name in names}
    return resolve_part_data(model, data_raw, registry)


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


def config_to_dict(cfg: Any) -> Any:
    """A config (or any part of it) as plain data: dicts, lists, str, numbers, bools, None."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg
