"""A classifier on a pre-trained MAE encoder, for fine-tuning and linear probing (reference section 2).

The encoder is rebuilt from the checkpoint's config (with drop path, and a new token grid when
``tokenizer`` overrides change the input size: anymae's position tables are fixed sin-cos, so they are
simply recomputed for the new grid) and its weights are copied in; the decoder is dropped.
Features: the average of the patch tokens followed by ``fc_norm`` (official fine-tuning; the final
encoder norm is then unused and removed), or the CLS token after the final norm (official linear probe).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import Tensor, nn

from anymae.core.build.adapt import make_pos_embed_learned, transfer_weights
from anymae.core.build.models import build_encoder, build_model, set_fused_attn, vit_encoder
from anymae.core.config import COMPOSITE, config_to_dict, resolve_model_config
from anymae.core.model.composite import MultiModalMAE, PartsTokenizer
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import MaskingStrategy, shuffle_from_noise
from anymae.core.model.tokenizer import TokenEmbedder
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["Classifier", "build_classifier", "layer_id", "param_groups_lars", "param_groups_layer_decay"]


class Classifier(nn.Module):
    """tokenizer -> encoder (all tokens, no masking) -> pooled feature (N, D) -> [BatchNorm] -> Linear head.

    ``global_pool``: mean of the patch tokens + ``fc_norm`` (the encoder's final norm is replaced by
    Identity, as the official fine-tuning model deletes it); else the CLS token after the final norm.
    ``head_bn``: BatchNorm1d(D, affine=False, eps=1e-6) before the head (official linear probe; in train
    mode it normalises with the batch statistics, as the official code does).
    ``token_masking``: a masking strategy that drops tokens in training mode only, at ``token_mask_ratio``
    (AudioMAE's fine-tuning regulariser: ``time_frequency`` at 0.2); the pooled feature is the mean of the
    kept tokens. Evaluation always sees every token.
    """

    def __init__(
        self,
        *,
        tokenizer: TokenEmbedder,
        encoder: MaskedEncoder,
        num_classes: int,
        global_pool: bool,
        head_bn: bool = False,
        head_init_std: float = 2e-5,
        norm_eps: float = 1e-6,
        token_masking: MaskingStrategy | None = None,
        token_mask_ratio: float = 0.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not global_pool and encoder.num_prefix == 0:
            raise ValueError("global_pool: false needs a CLS token, but this encoder has none (model.cls_token)")
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.global_pool = global_pool
        self.token_masking, self.token_mask_ratio = token_masking, token_mask_ratio
        dim = encoder.embed_dim
        self.fc_norm: nn.Module = nn.LayerNorm(dim, eps=norm_eps) if global_pool else nn.Identity()
        if global_pool:
            self.encoder.norm = nn.Identity()
        self.head_bn: nn.Module = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if head_bn else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)  # timm's trunc_normal_: bounds +-2 (absolute)
        nn.init.zeros_(self.head.bias)
        self.config: dict[str, Any] = dict(config or {})  # plain data to rebuild it (saved in checkpoints)

    @property
    def depth(self) -> int:
        return len(self.encoder.blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        """x -> pooled features (N, D)."""
        tokens = self.tokenizer(x)  # (N, L, D)
        ids_keep = None
        if self.training and self.token_masking is not None and self.token_mask_ratio > 0:
            noise, len_keep = self.token_masking(
                batch=tokens.shape[0], grid=self.tokenizer.grid, mask_ratio=self.token_mask_ratio, device=x.device
            )
            ids_keep = shuffle_from_noise(noise, len_keep)[0]  # (N, L_vis)
        tokens = self.encoder(tokens, ids_keep)  # (N, num_prefix + L_vis, D)
        if self.global_pool:
            return self.fc_norm(tokens[:, self.encoder.num_prefix :].mean(dim=1))  # (N, D)
        return tokens[:, 0]  # (N, D): CLS after the final norm

    def forward(self, x: Tensor) -> Tensor:
        """x -> logits (N, num_classes)."""
        return self.head(self.head_bn(self.forward_features(x)))


def build_classifier(
    pretrained: MaskedAutoencoder | MultiModalMAE,
    *,
    num_classes: int,
    global_pool: bool,
    head_bn: bool = False,
    drop_path: float = 0.0,
    head_init_std: float = 2e-5,
    tokenizer_overrides: dict[str, Any] | None = None,
    init_bands: tuple[int, ...] | None = None,
    token_masking: str | None = None,
    token_mask_ratio: float = 0.0,
    parts: list[str] | None = None,
    registry: Registry | None = None,
) -> Classifier:
    """A :class:`Classifier` whose tokenizer and encoder weights are ``pretrained``'s; ``token_masking`` names
    a registered masking strategy used in training mode (see :class:`Classifier`).

    ``tokenizer_overrides`` may change the input size, the channel count and the patch size: the weights are
    adapted (:func:`anymae.core.build.adapt.transfer_weights`; ``init_bands`` picks the checkpoint's channel for each
    input channel), the adaptations printed and kept in ``config["init"]``.

    A composite ``pretrained`` gives a classifier over ``parts`` (default: all of them) with a
    :class:`~anymae.core.model.composite.PartsTokenizer`: inputs ``{part: tensor}``, features of those parts only."""
    registry = resolve_registry(registry)
    if isinstance(pretrained, MultiModalMAE):
        if tokenizer_overrides or init_bands or token_masking:
            raise ValueError("tokenizer overrides, init_bands and token_masking do not apply to composite models yet")
        return _composite_classifier(pretrained, parts=parts, num_classes=num_classes, global_pool=global_pool,
                                     head_bn=head_bn, drop_path=drop_path, head_init_std=head_init_std,
                                     registry=registry)  # fmt: skip
    if parts is not None:
        raise ValueError(
            f"parts={parts!r} is for composite models; this one is {pretrained.config['model']['modality']}"
        )
    return _modality_classifier(pretrained, num_classes=num_classes, global_pool=global_pool, head_bn=head_bn,
                                drop_path=drop_path, head_init_std=head_init_std,
                                tokenizer_overrides=tokenizer_overrides, init_bands=init_bands,
                                token_masking=token_masking, token_mask_ratio=token_mask_ratio,
                                registry=registry)  # fmt: skip


def _modality_classifier(
    pretrained: MaskedAutoencoder,
    *,
    num_classes: int,
    global_pool: bool,
    head_bn: bool,
    drop_path: float,
    head_init_std: float,
    tokenizer_overrides: dict[str, Any] | None,
    init_bands: tuple[int, ...] | None,
    token_masking: str | None,
    token_mask_ratio: float,
    registry: Registry,
) -> Classifier:
    """The classifier of :func:`build_classifier` on a one-modality MAE: its encoder rebuilt for the
    (overridden) tokenizer config, the weights transferred and adapted."""
    model_raw = copy.deepcopy(pretrained.config["model"])
    model_raw["tokenizer"] = {**config_to_dict(model_raw.get("tokenizer") or {}), **(tokenizer_overrides or {})}
    cfg = resolve_model_config(model_raw, registry)
    # Fixed position tables are recomputed for the (possibly new) grid; a learned one is resized.
    tokenizer, encoder = build_encoder(cfg, registry=registry, drop_path_rate=drop_path)
    if isinstance(pretrained.encoder.pos_embed, nn.Parameter):
        make_pos_embed_learned(encoder)
    report = transfer_weights(
        pretrained, nn.ModuleDict({"tokenizer": tokenizer, "encoder": encoder}), source_name="the pre-trained model",
        bands=init_bands, drop=("decoder.",),
    )  # fmt: skip
    if report.changed and _is_main_process():
        print("classifier from the pre-trained model: " + "; ".join(report.lines()[1:]), flush=True)
    set_fused_attn(encoder, cfg.fused_attn)
    config = {
        "model": config_to_dict(cfg),
        "classifier": {
            "num_classes": num_classes,
            "global_pool": global_pool,
            "head_bn": head_bn,
            "drop_path": drop_path,
            "token_masking": token_masking,
            "token_mask_ratio": token_mask_ratio,
        },
        **({"init": {k: v for k, v in report.as_dict().items() if k != "loaded"}} if report.changed else {}),
    }
    return Classifier(
        tokenizer=tokenizer,
        encoder=encoder,
        num_classes=num_classes,
        global_pool=global_pool,
        head_bn=head_bn,
        head_init_std=head_init_std,
        norm_eps=cfg.norm_eps,
        token_masking=registry.masking_strategy(token_masking) if token_masking else None,
        token_mask_ratio=token_mask_ratio,
        config=config,
    )


def _composite_classifier(
    pretrained: MultiModalMAE,
    *,
    parts: list[str] | None,
    num_classes: int,
    global_pool: bool,
    head_bn: bool,
    drop_path: float,
    head_init_std: float,
    registry: Registry,
) -> Classifier:
    """The classifier of :func:`build_classifier` over some parts of a composite: fresh modules with the
    pre-trained tokenizers, modality embeddings and shared encoder copied in."""
    cfg = resolve_model_config(copy.deepcopy(pretrained.config["model"]), registry)
    names = list(parts or pretrained.parts)
    unknown = [name for name in names if name not in pretrained.parts]
    if unknown or not names:
        raise ValueError(f"parts {names} must name parts of the model: {', '.join(pretrained.parts)}")
    shell = build_model(cfg, registry=registry, with_decoder=False)
    kept = ("encoder.", "parts.", "contrastive.")  # the encoder side; a contrastive projection is unused here
    shell.load_state_dict({k: v for k, v in pretrained.state_dict().items() if k.startswith(kept)
                           and ".decoder." not in k})  # fmt: skip
    tokenizer = PartsTokenizer({name: shell.parts[name] for name in names}, embed_dim=cfg.embed_dim)
    encoder = vit_encoder(cfg, tokenizer.position_table(cfg.embed_dim), drop_path_rate=drop_path)
    encoder.load_state_dict(shell.encoder.state_dict())  # blocks, norm, CLS; the positions are the parts' own
    set_fused_attn(encoder, cfg.fused_attn)
    head = {"num_classes": num_classes, "global_pool": global_pool, "head_bn": head_bn, "drop_path": drop_path,
            "token_masking": None, "token_mask_ratio": 0.0, "parts": names}  # fmt: skip
    return Classifier(tokenizer=tokenizer, encoder=encoder, num_classes=num_classes, global_pool=global_pool,
                      head_bn=head_bn, head_init_std=head_init_std, norm_eps=cfg.norm_eps,
                      config={"model": config_to_dict(cfg), "classifier": head})  # fmt: skip


def classifier_from_config(config: dict[str, Any], registry: Registry | None = None) -> Classifier:
    """Rebuild an (untrained) :class:`Classifier` from the plain ``config`` stored in its checkpoint."""
    registry = resolve_registry(registry)
    cfg = resolve_model_config(config["model"], registry)
    head = dict(config["classifier"])
    if cfg.modality == COMPOSITE:
        shell = build_model(cfg, registry=registry, with_decoder=False)
        stored = ("num_classes", "global_pool", "head_bn", "drop_path", "parts")
        return build_classifier(shell, registry=registry, **{key: head[key] for key in stored})
    tokenizer, encoder = build_encoder(cfg, registry=registry)
    shell = MaskedAutoencoder(tokenizer=tokenizer, encoder=encoder, decoder=None, config={"model": config_to_dict(cfg)})
    stored = ("num_classes", "global_pool", "head_bn", "drop_path")  # the head, as build_classifier wrote it
    return build_classifier(shell, registry=registry, **{key: head[key] for key in stored})


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


# --- parameter groups --------------------------------------------------------------------------------
_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """The official layer id for lr decay: cls token / position table / patch embedding 0, block i -> i + 1,
    everything after the blocks (final norm, fc_norm, head) depth + 1."""
    if name.startswith(("tokenizer.", "encoder.cls_token", "encoder.pos_embed")):
        return 0
    match = _BLOCK.match(name)
    return int(match.group(1)) + 1 if match else depth + 1


def param_groups_layer_decay(model: Classifier, *, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the official fine-tuning: one per (layer id, decay or not), each with
    ``lr_scale = layer_decay ** (depth + 1 - layer_id)``; no weight decay for 1-D parameters and the CLS token."""
    depth = model.depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim == 1 or name == "encoder.cls_token")
        lid = layer_id(name, depth)
        group = groups.setdefault(
            (lid, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - lid),
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def param_groups_lars(model: nn.Module, *, weight_decay: float) -> list[dict[str, Any]]:
    """LARS groups of the official linear probe: 1-D parameters (biases) get neither weight decay nor the
    trust-ratio adaptation; the others are always adapted (timm's ``always_adapt``), even with wd 0."""
    matrices, vectors = [], []
    for param in model.parameters():
        if param.requires_grad:
            (vectors if param.ndim == 1 else matrices).append(param)
    return [
        {"params": matrices, "weight_decay": weight_decay, "always_adapt": True, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "always_adapt": False, "lr_scale": 1.0},
    ]
