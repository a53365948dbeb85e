"""Config -> model: the one place where config values become constructor keyword arguments."""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from anymae.core.config import COMPOSITE, ModelConfig, check_decoder_options, config_to_dict
from anymae.core.model.composite import MultiModalMAE, Part
from anymae.core.model.contrastive import ContrastiveTerm
from anymae.core.model.decoder import DecoderArgs, TransformerBlocks
from anymae.core.model.encoder import MaskedEncoder, vit_blocks
from anymae.core.model.joint_decoder import JointDecoder
from anymae.core.model.mae import MaskedAutoencoder
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "build_composite",
    "build_encoder",
    "build_model",
    "checkpoint_decoder_blocks",
    "checkpoint_encoder_blocks",
    "compile_blocks",
    "set_fused_attn",
    "transformer_blocks",
    "vit_encoder",
]


def build_model(
    cfg: ModelConfig, *, registry: Registry | None = None, with_decoder: bool = True
) -> MaskedAutoencoder | MultiModalMAE:
    """Build an MAE from a validated :class:`ModelConfig` (its ``tokenizer`` already the modality's dataclass).

    Plugins are consulted here, at build time; the returned model is plain ``nn.Module``s.
    """
    registry = resolve_registry(registry)
    if cfg.modality == COMPOSITE:
        return build_composite(cfg, registry=registry, with_decoder=with_decoder)
    tokenizer, encoder = build_encoder(cfg, registry=registry)
    decoder = None
    if with_decoder:
        decoder = _build_decoder(cfg, cfg.decoder, cfg.decoder_options, tokenizer, registry=registry)
    model = MaskedAutoencoder(
        tokenizer=tokenizer,
        encoder=encoder,
        decoder=decoder,
        masking=_masking(cfg.masking, cfg.masking_options, registry=registry),
        mask_ratio=cfg.mask_ratio,
        target=registry.target(cfg.target),
        pred_masked_only=cfg.pred_masked_only,
        config={"model": config_to_dict(cfg), "with_decoder": with_decoder},
    )
    set_fused_attn(model, cfg.fused_attn)
    return model


def build_composite(cfg: ModelConfig, *, registry: Registry, with_decoder: bool = True) -> MultiModalMAE:
    """A model over several modalities (``model.modality: composite``): each of ``model.parts`` its modality's
    tokenizer, masking, target and decoder (the decoder widths are ``model.*``'s); one shared encoder whose
    position table is the parts' tables in part order."""
    parts, tables = {}, []
    for name, part_cfg in cfg.parts.items():
        tokenizer = registry.modality(part_cfg.modality).build_tokenizer(part_cfg.tokenizer, embed_dim=cfg.embed_dim)
        decoder = None
        if with_decoder and not cfg.joint_decoder:
            decoder = _build_decoder(cfg, part_cfg.decoder, part_cfg.decoder_options, tokenizer, registry=registry)
        parts[name] = Part(
            tokenizer=tokenizer,
            decoder=decoder,
            embed_dim=cfg.embed_dim,
            masking=_masking(part_cfg.masking, part_cfg.masking_options, registry=registry),
            mask_ratio=part_cfg.mask_ratio,
            target=registry.target(part_cfg.target),
            pred_masked_only=part_cfg.pred_masked_only,
            loss_weight=part_cfg.loss_weight,
            blocks=_part_blocks(cfg),
        )
        tables.append(tokenizer.position_table(cfg.embed_dim))
    encoder = vit_encoder(cfg, torch.cat(tables))  # (L, D): each part's own positions
    joint = None
    if with_decoder and cfg.joint_decoder:
        joint = JointDecoder(
            in_dim=cfg.embed_dim,
            embed_dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.decoder_mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            tables={name: part.tokenizer.position_table(cfg.decoder_embed_dim) for name, part in parts.items()},
            out_dims={name: part.tokenizer.patch_dim for name, part in parts.items()},
            num_prefix=int(cfg.cls_token),
            norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
        )
    contrastive = None
    if cfg.contrastive.weight > 0:  # encoder-only too: retrieval reads its projection
        names = list(parts)
        term = cfg.contrastive
        contrastive = ContrastiveTerm(
            parts=names,
            embed_dim=cfg.embed_dim,
            pairs=[tuple(p) for p in term.pairs] if term.pairs else list(itertools.combinations(names, 2)),
            weight=term.weight,
            temperature=term.temperature,
            proj_dim=term.proj_dim,
            masked=term.masked,
        )
    model = MultiModalMAE(
        parts=parts,
        encoder=encoder,
        decoder=joint,
        modality_dropout=cfg.modality_dropout,
        contrastive=contrastive,
        config={"model": config_to_dict(cfg), "with_decoder": with_decoder},
    )
    set_fused_attn(model, cfg.fused_attn)
    return model


def _part_blocks(cfg: ModelConfig) -> nn.ModuleList:
    """A composite part's own ``model.part_depth`` encoder blocks (CAV-MAE's modality-specific layers)."""
    norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
    return vit_blocks(Block, depth=cfg.part_depth, dim=cfg.embed_dim, num_heads=cfg.num_heads,
                      mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, norm_layer=norm_layer)  # fmt: skip


def _build_decoder(
    cfg: ModelConfig, name: str, options: dict[str, Any], tokenizer: Any, *, registry: Registry
) -> nn.Module:
    """Decoder ``name`` for ``tokenizer``'s tokens, with the widths of ``cfg`` and its own ``options``."""
    builder = registry.decoder(name)
    check_decoder_options(builder, options)
    args: DecoderArgs = {
        "in_dim": cfg.embed_dim,
        "embed_dim": cfg.decoder_embed_dim,
        "depth": cfg.decoder_depth,
        "num_heads": cfg.decoder_num_heads,
        "mlp_ratio": cfg.decoder_mlp_ratio,
        "qkv_bias": cfg.qkv_bias,
        "out_dim": tokenizer.patch_dim,
        "pos_table": tokenizer.position_table(cfg.decoder_embed_dim),
        "norm_layer": partial(nn.LayerNorm, eps=cfg.norm_eps),
        "grid": tuple(tokenizer.grid),
        "num_prefix": int(cfg.cls_token),
    }
    return builder(**args, **options)


def _masking(name: str, options: dict[str, Any], *, registry: Registry) -> Any:
    strategy = registry.masking_strategy(name)
    return partial(strategy, **options) if options else strategy


def build_encoder(cfg: ModelConfig, *, registry: Registry, drop_path_rate: float = 0.0) -> tuple[Any, MaskedEncoder]:
    """The modality's tokenizer and the ViT encoder of ``cfg``, position tables computed for its grid."""
    tokenizer = registry.modality(cfg.modality).build_tokenizer(cfg.tokenizer, embed_dim=cfg.embed_dim)
    return tokenizer, vit_encoder(cfg, tokenizer.position_table(cfg.embed_dim), drop_path_rate=drop_path_rate)


def vit_encoder(cfg: ModelConfig, pos_table: torch.Tensor, *, drop_path_rate: float = 0.0) -> MaskedEncoder:
    """The ViT encoder of ``cfg`` over the fixed positions ``pos_table`` (L, D)."""
    return MaskedEncoder(
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        pos_table=pos_table,
        norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
        cls_token=cfg.cls_token,
        drop_path_rate=drop_path_rate,
    )


def set_fused_attn(model: nn.Module, enabled: bool) -> None:
    """Switch every timm attention layer between ``scaled_dot_product_attention`` and the explicit
    ``softmax(q k^T / sqrt(d)) v`` of the official code (same result up to rounding)."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled


def compile_blocks(model: nn.Module, **options: Any) -> None:
    """``torch.compile`` each transformer block in place (``train.compile``): the masking, gathers and
    the variable visible-token count stay eager, so one compiled graph serves every step."""
    for part in (model.encoder, *_decoders(model)):
        if isinstance(part, TransformerBlocks):
            for block in part.blocks:
                block.compile(**options)


def checkpoint_decoder_blocks(model: nn.Module, count: int) -> None:
    """Activation checkpointing (``train.checkpoint_decoder_blocks``): the first ``count`` decoder blocks keep
    only their input for backward and recompute the rest. The decoder sees every token (the encoder only the
    visible quarter), so that is where the activation memory is. Parameter names are unchanged."""
    for decoder in _decoders(model):
        if isinstance(decoder, TransformerBlocks):
            _checkpoint_blocks(decoder.blocks, count)


def checkpoint_encoder_blocks(model: nn.Module, count: int) -> None:
    """Activation checkpointing of the first ``count`` encoder blocks (``train.checkpoint_encoder_blocks``)."""
    _checkpoint_blocks(model.encoder.blocks, count)


def _checkpoint_blocks(blocks: nn.ModuleList, count: int) -> None:
    from torch.utils.checkpoint import checkpoint

    for block in list(blocks)[:count]:
        block.forward = partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's transformer blocks and every decoder's (FSDP shards each as one unit)."""
    parts = [model.encoder, *_decoders(model)]
    return [block for part in parts if isinstance(part, TransformerBlocks) for block in part.blocks]


def _decoders(model: nn.Module) -> list[nn.Module]:
    """The model's decoder, or each part's of a composite (none for a classifier)."""
    return model.decoders() if isinstance(model, (MaskedAutoencoder, MultiModalMAE)) else []
