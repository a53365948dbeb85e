"""Config -> model: the one place where config values become constructor keyword arguments."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from .config import ModelConfig, config_to_dict
from .decoder import MaskedDecoder
from .encoder import MaskedEncoder
from .model import MaskedAutoencoder

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, *, registry: Any = None, with_decoder: bool = True) -> MaskedAutoencoder:
    """Build an MAE from a validated :class:`ModelConfig` (its ``tokenizer`` already the modality's dataclass).

    Plugins are consulted here, at build time; the returned model is plain ``nn.Module``s.
    """
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    modality = registry.modality(cfg.modality)
    norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
    tokenizer = modality.build_tokenizer(cfg.tokenizer, embed_dim=cfg.embed_dim)
    encoder = MaskedEncoder(
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        pos_table=tokenizer.position_table(cfg.embed_dim),
        norm_layer=norm_layer,
    )
    decoder = None
    if with_decoder:
        decoder = MaskedDecoder(
            in_dim=cfg.embed_dim,
            embed_dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.decoder_mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            out_dim=tokenizer.patch_dim,
            pos_table=tokenizer.position_table(cfg.decoder_embed_dim),
            norm_layer=norm_layer,
        )
    return MaskedAutoencoder(
        tokenizer=tokenizer,
        encoder=encoder,
        decoder=decoder,
        masking=registry.masking_strategy(cfg.masking),
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
        config={"model": config_to_dict(cfg), "with_decoder": with_decoder},
    )
