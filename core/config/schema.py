"""The pre-training config as typed dataclasses: ``model`` (and a composite's ``model.parts``), ``optim``,
``train`` and the whole run. Each dataclass checks its own value ranges in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from anymae.core.config.loggers import check_loggers

__all__ = [
    "Config",
    "ContrastiveConfig",
    "ModelConfig",
    "OptimConfig",
    "PartConfig",
    "TrainConfig",
    "check_lr_schedule",
]


@dataclass
class ContrastiveConfig:
    """``model.contrastive``: CAV-MAE's contrastive term between a composite's parts (Gong et al., ICLR 2023,
    section 3.3; anymae.core.model.contrastive). ``weight`` 0 (the default) builds nothing: the model, its
    checkpoint and its loss are those of a composite without the term."""

    weight: float = 0.0  # CAV-MAE: 0.01 (lambda_c, its "contrast_loss_weight")
    temperature: float = 0.05  # CAV-MAE's tau
    proj_dim: int = 0  # 0: no projection (CAV-MAE contrasts the pooled, normalised encoder output); N: Linear(D, N)
    pairs: list[list[str]] | None = None  # [[audio, video], ...]; default: every pair of parts
    masked: bool = True  # the parts' visible tokens under the training masks (CAV-MAE); false: every token

    def __post_init__(self) -> None:
        if self.weight < 0 or self.temperature <= 0 or self.proj_dim < 0:
            raise ValueError(
                f"weight must be >= 0, temperature > 0 and proj_dim >= 0, got weight {self.weight}, "
                f"temperature {self.temperature}, proj_dim {self.proj_dim}"
            )
        for pair in self.pairs or []:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"pairs: each pair names two different parts, got {pair}")


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
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)  # composite: CAV-MAE's contrastive term

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
    # pretrain: start this part from a single-modality MAE file (anything model.init_from takes): its tokenizer,
    # its first part_depth blocks into the part's own, the rest into the shared encoder (from the first part that
    # names a file; later parts' files give their tokenizer and own blocks), its decoder into the part's own
    init_from: str | None = None
    init_bands: tuple[int, ...] | None = None  # init_from: the file's input channel for each channel of the part

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.init_bands is not None and (self.init_from is None or not self.init_bands or min(self.init_bands) < 0):
            raise ValueError(f"init_bands must be channel indices >= 0 of init_from's file, got {self.init_bands}")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {self.loss_weight}")


def check_lr_schedule(cfg: Any) -> None:
    """The value checks both optimizer sections (OptimConfig, ClassifyOptimConfig) share: the lr rule, the schedule
    and the decay."""
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
        check_lr_schedule(self)


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
    # Experiment trackers, each logging the same scalars, figures and config: tensorboard | wandb | mlflow
    # (optional extras: pip install 'anymae[wandb]' / 'anymae[mlflow]'; anymae.core.train.trackers).
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])

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
        check_loggers(self.loggers, "loggers")


@dataclass
class Config:
    """A whole run: ``model``, ``data`` (the modality's data_config), ``optim``, ``train``."""

    name: str = "run"
    preset: str | None = None  # the name of the applied entry of the config's ``presets`` (e.g. crops)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
