"""Converters from the official MAE and Hugging Face ViTMAE layouts to anymae's (reference section 5).

Each converter returns ``(model_config, state_dict, fixed_tables)``: a plain-data ``model`` config section
inferred from the tensors (or ``config.json``), the weights under anymae's key names, and the checkpoint's
stored fixed position tables, which anymae recomputes and only compares.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OFFICIAL_HEADS",
    "count_blocks",
    "from_hugging_face",
    "from_official_mae",
    "is_official_mae",
    "split_official_state",
]

# Heads are not visible in the tensors; these are the official architectures (reference section 1).
OFFICIAL_HEADS = {768: 12, 1024: 16, 1280: 16}
OFFICIAL_DECODER_HEADS = 16

_OFFICIAL_PREFIXES = (
    ("patch_embed.proj.", "tokenizer.proj."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
)
_OFFICIAL_NAMES = {"cls_token": "encoder.cls_token", "mask_token": "decoder.mask_token"}
_OFFICIAL_TABLES = {"pos_embed": "encoder.pos_embed", "decoder_pos_embed": "decoder.pos_embed"}


def is_official_mae(state: dict[str, Any]) -> bool:
    return "patch_embed.proj.weight" in state and "cls_token" in state


def count_blocks(state: dict[str, Any], pattern: str) -> int:
    r"""1 + the largest block index captured by ``pattern`` (e.g. ``r"blocks\.(\d+)\."``) among the keys."""
    ids = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(ids) + 1 if ids else 0


def from_official_mae(
    state: dict[str, Tensor], *, num_heads: int | None = None, norm_pix_loss: bool = True
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """An official ``models_mae`` / ``models_vit`` state dict -> (model section, anymae state, fixed tables)."""
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    heads = num_heads or OFFICIAL_HEADS.get(dim)
    if heads is None:
        raise ValueError(f"cannot infer the number of heads for width {dim}; pass num_heads=")
    num_tokens = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else None
    side = math.isqrt(num_tokens) if num_tokens else 14
    if num_tokens and side * side != num_tokens:
        raise ValueError(f"pos_embed has {num_tokens} patch slots, not a square grid")
    model: dict[str, Any] = {
        "modality": "image",
        "tokenizer": {"img_size": side * patch, "patch_size": patch, "in_chans": chans},
        "embed_dim": dim,
        "depth": count_blocks(state, r"blocks\.(\d+)\."),
        "num_heads": heads,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "norm_pix_loss": norm_pix_loss,
        "norm_eps": 1e-6,
    }
    if "decoder_embed.weight" in state:
        dec_dim = state["decoder_embed.weight"].shape[0]
        model.update(
            decoder_embed_dim=dec_dim,
            decoder_depth=count_blocks(state, r"decoder_blocks\.(\d+)\."),
            decoder_num_heads=OFFICIAL_DECODER_HEADS,
            decoder_mlp_ratio=state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dec_dim,
        )
    converted, tables = split_official_state(state)
    return model, converted, tables


def split_official_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An official-layout state dict (MAE; AudioMAE uses the same names) -> (anymae keys, stored position
    tables keyed ``encoder.pos_embed`` / ``decoder.pos_embed``, to compare with the fixed ones)."""
    converted, tables = {}, {}
    for key, value in state.items():
        if key in _OFFICIAL_TABLES:
            tables[_OFFICIAL_TABLES[key]] = value
        else:
            converted[_rename_official(key)] = value
    return converted, tables


def _rename_official(key: str) -> str:
    if key in _OFFICIAL_NAMES:
        return _OFFICIAL_NAMES[key]
    for old, new in _OFFICIAL_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key  # unknown keys (e.g. a fine-tuned head) stay as they are and are reported as unexpected


_HF_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def from_hugging_face(
    config: dict[str, Any], state: dict[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """A ``ViTMAEForPreTraining`` (or ``ViTMAEModel``) config.json + weights -> (model section, state, tables)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not supported (MAE uses exact GELU)")
    size = config.get("image_size", 224)
    dim = config["hidden_size"]
    model: dict[str, Any] = {
        "modality": "image",
        "tokenizer": {
            "img_size": size if isinstance(size, int) else list(size),
            "patch_size": config.get("patch_size", 16),
            "in_chans": config.get("num_channels", 3),
        },
        "embed_dim": dim,
        "depth": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "mlp_ratio": config["intermediate_size"] / dim,
        "qkv_bias": config.get("qkv_bias", True),
        "norm_eps": config.get("layer_norm_eps", 1e-12),  # HF's default; the official code uses 1e-6
        "mask_ratio": config.get("mask_ratio", 0.75),
        "norm_pix_loss": config.get("norm_pix_loss", False),
    }
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    if any(k.startswith("decoder.") for k in state):
        dec = config["decoder_hidden_size"]
        model.update(
            decoder_embed_dim=dec,
            decoder_depth=config["decoder_num_hidden_layers"],
            decoder_num_heads=config["decoder_num_attention_heads"],
            decoder_mlp_ratio=config["decoder_intermediate_size"] / dec,
        )
    converted: dict[str, Tensor] = {}
    tables: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in ("embeddings.position_embeddings", "decoder.decoder_pos_embed"):
            tables["encoder.pos_embed" if key.startswith("embeddings") else "decoder.pos_embed"] = value
            continue
        # Decoder blocks: `decoder.decoder_layers.j` on the Hub, `decoder.decoder_encoder.layer.j` from
        # transformers 5 `save_pretrained`.
        m = re.match(
            r"(encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$",
            key,
        )
        if m:
            where, i, name, kind = m.groups()
            prefix = f"{'encoder' if where == 'encoder.layer' else 'decoder'}.blocks.{i}"
            qkv_match = re.fullmatch(r"attention\.attention\.(query|key|value)", name)
            if qkv_match:
                qkv.setdefault(f"{prefix}.attn.qkv.{kind}", {})[qkv_match.group(1)] = value
                continue
            converted[f"{prefix}.{_HF_BLOCK.get(name, name)}.{kind}"] = value
            continue
        converted[_rename_hf(key)] = value
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"{key}: expected query, key and value tensors, found {sorted(parts)}")
        converted[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)  # rows q|k|v
    return model, converted, tables


def _rename_hf(key: str) -> str:
    names = {
        "embeddings.cls_token": "encoder.cls_token",
        "embeddings.patch_embeddings.projection.weight": "tokenizer.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "tokenizer.proj.bias",
        "layernorm.weight": "encoder.norm.weight",
        "layernorm.bias": "encoder.norm.bias",
        "decoder.mask_token": "decoder.mask_token",
    }
    if key in names:
        return names[key]
    for old, new in (
        ("decoder.decoder_embed.", "decoder.embed."),
        ("decoder.decoder_norm.", "decoder.norm."),
        ("decoder.decoder_pred.", "decoder.pred."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    return key
