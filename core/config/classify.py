"""The fine-tuning and linear-probing config as typed dataclasses: the ``finetune`` / ``linprobe`` head
sections, their optimizer section and the whole classifier run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from anymae.core.config.schema import TrainConfig, check_lr_schedule

__all__ = ["ClassifyConfig", "ClassifyOptimConfig", "FinetuneConfig", "LinprobeConfig"]


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
        check_lr_schedule(self)


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
