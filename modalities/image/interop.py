"""Key mappings between anymae and the official MAE, timm ViT and Hugging Face ViTMAE layouts (reference
section 5); :mod:`.formats` registers the readers and writers built on them.

Each importer returns ``(model_config, state_dict, fixed_tables)``: a plain-data ``model`` config section
inferred from the tensors (or ``config.json``), the weights under anymae's key names, and the checkpoint's
stored fixed position tables, which anymae recomputes and only compares. The official layout is timm's
``VisionTransformer`` layout, so timm ViT state dicts (``vit_*.mae`` on the Hub) import the same way.
``to_official_names`` maps the other way, for export.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.formats import (
    MAE_VIT_NAMES,
    MAE_VIT_PREFIXES,
    count_blocks,
    hugging_face_widths,
    rename_keys,
    split_mae_vit_state,
)

__all__ = [
    "OFFICIAL_DECODER_HEADS",
    "OFFICIAL_HEADS",
    "from_hugging_face",
    "from_official_classifier",
    "from_official_mae",
    "hugging_face_config",
    "hugging_face_keys",
    "is_official_classifier",
    "is_official_mae",
    "split_official_state",
    "to_hugging_face",
    "to_official_names",
]

# Heads are not visible in the tensors; these are the official architectures (reference section 1) and
# timm's ViT-Ti/S widths (head width 64).
OFFICIAL_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
OFFICIAL_DECODER_HEADS = 16

# Classifier heads: official fine-tuning (``fc_norm`` + ``head``) and linear probing (``head`` is
# Sequential(BatchNorm1d(affine=False), Linear), so ``head.0`` / ``head.1``).
_CLASSIFIER_PREFIXES = (("fc_norm.", "fc_norm."), ("head.0.", "head_bn."), ("head.1.", "head."), ("head.", "head."))


def is_official_mae(state: dict[str, Any]) -> bool:
    """An official MAE / timm ViT state dict (with or without a CLS token)."""
    return "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def is_official_classifier(state: dict[str, Any]) -> bool:
    """An official fine-tuned / linear-probe (or timm ViT classifier) state dict: the ViT plus a ``head``."""
    return is_official_mae(state) and ("head.weight" in state or "head.1.weight" in state)


def from_official_mae(
    state: dict[str, Tensor], *, num_heads: int | None = None, norm_pix_loss: bool = True
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """An official ``models_mae`` / ``models_vit`` (or timm ViT) state dict -> (model section, anymae state,
    fixed tables).

    A ``pos_embed`` without the CLS row (timm ``no_embed_class=True``) gets the official all-zero CLS row, which
    adds nothing to the CLS token: the same model.
    """
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    heads = num_heads or OFFICIAL_HEADS.get(dim)
    if heads is None:
        raise ValueError(f"cannot infer the number of heads for width {dim}; pass num_heads= (--num-heads)")
    state = dict(state)
    cls_token = "cls_token" in state
    side = _grid_side(state, "pos_embed", num_prefix=int(cls_token))
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
        "cls_token": cls_token,
    }
    if "decoder_embed.weight" in state:
        dec_dim = state["decoder_embed.weight"].shape[0]
        model.update(
            decoder_embed_dim=dec_dim,
            decoder_depth=count_blocks(state, r"decoder_blocks\.(\d+)\."),
            decoder_num_heads=OFFICIAL_DECODER_HEADS,
            decoder_mlp_ratio=state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dec_dim,
        )
        _grid_side(state, "decoder_pos_embed", num_prefix=int(cls_token))
    converted, tables = split_official_state(state)
    return model, converted, tables


def from_official_classifier(
    state: dict[str, Tensor], *, num_heads: int | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor], Tensor | None]:
    """An official ``mae_finetuned_*`` / linear-probe (or timm ViT classifier) state dict -> (model section,
    classifier section, anymae classifier state, stored ``pos_embed`` (1, num_prefix + L, D) or None).

    Pooling follows the keys: ``fc_norm`` means the mean of the patch tokens then ``fc_norm`` (official
    fine-tuning, timm ``global_pool='avg'``); without it, the CLS token after the final ``norm``. ``head.0``
    running statistics mean the linear probe's BatchNorm1d(affine=False) before the head.
    """
    model, converted, tables = from_official_mae(state, num_heads=num_heads, norm_pix_loss=False)
    global_pool = "fc_norm.weight" in state
    if not global_pool and "norm.weight" not in state:
        raise ValueError("a classifier state dict needs fc_norm.* (average pooling) or norm.* (CLS pooling)")
    if global_pool and "norm.weight" in state:
        raise ValueError(
            "norm.* and fc_norm.* both present: a ViT that normalises before and after pooling is not a layout "
            "anymae's Classifier has (it drops the final norm when pooling, as the official fine-tuning does)"
        )
    head_key = "head.1.weight" if "head.1.weight" in state else "head.weight"
    classifier = {
        "num_classes": int(state[head_key].shape[0]),
        "global_pool": global_pool,
        "head_bn": "head.0.running_mean" in state,
        "drop_path": 0.0,
    }
    return model, classifier, converted, tables.get("encoder.pos_embed")


def _grid_side(state: dict[str, Tensor], key: str, *, num_prefix: int) -> int:
    """The side of the square patch grid of the table ``state[key]``, given a table with or without its
    prefix rows; a table without them gets all-zero prefix rows, in place (default side 14 when absent)."""
    if key not in state:
        return 14
    rows, dim = state[key].shape[-2:]
    side = math.isqrt(rows - num_prefix)
    if side * side == rows - num_prefix:
        return side
    side = math.isqrt(rows)
    if num_prefix and side * side == rows:  # timm no_embed_class: no CLS row
        state[key] = torch.cat([state[key].new_zeros(1, num_prefix, dim), state[key].reshape(1, rows, dim)], dim=1)
        return side
    raise ValueError(f"{key} has {rows} rows: not {num_prefix} prefix rows plus a square grid of patches")


def split_official_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An official-layout MAE or classifier state dict -> (anymae keys, stored position tables). The classifier
    heads keep their names (``fc_norm``, ``head``) except the linear probe's ``head.0`` / ``head.1``."""
    return split_mae_vit_state(state, extra_prefixes=_CLASSIFIER_PREFIXES)


def to_official_names(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """anymae keys (of an MAE or a classifier) -> (official / timm keys, anymae keys that have no official name).

    The linear probe's ``head_bn`` + ``head`` become the official ``head.0`` + ``head.1``.
    """
    inverse = [(new, old) for old, new in MAE_VIT_PREFIXES]
    inverse_names = {new: old for old, new in MAE_VIT_NAMES.items()}
    linprobe = any(k.startswith("head_bn.") for k in state)
    classifier = [("fc_norm.", "fc_norm."), ("head_bn.", "head.0."), ("head.", "head.1." if linprobe else "head.")]
    renamed: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key in inverse_names:
            renamed[inverse_names[key]] = value
            continue
        for new, old in inverse + classifier:
            if key.startswith(new):
                renamed[old + key[len(new) :]] = value
                break
        else:
            unmapped.append(key)
    return renamed, sorted(unmapped)


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
    size = config.get("image_size", 224)
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    model: dict[str, Any] = {
        "modality": "image",
        "tokenizer": {
            "img_size": size if isinstance(size, int) else list(size),
            "patch_size": config.get("patch_size", 16),
            "in_chans": config.get("num_channels", 3),
        },
        **hugging_face_widths(config, decoder=any(k.startswith("decoder.") for k in state)),
        "qkv_bias": config.get("qkv_bias", True),
        "mask_ratio": config.get("mask_ratio", 0.75),
        "norm_pix_loss": config.get("norm_pix_loss", False),
    }
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
        converted[rename_keys(key, _HF_PREFIXES, _HF_NAMES)] = value
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"{key}: expected query, key and value tensors, found {sorted(parts)}")
        converted[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)  # rows q|k|v
    return model, converted, tables


_HF_NAMES = {
    "embeddings.cls_token": "encoder.cls_token",
    "embeddings.patch_embeddings.projection.weight": "tokenizer.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "tokenizer.proj.bias",
    "layernorm.weight": "encoder.norm.weight",
    "layernorm.bias": "encoder.norm.bias",
    "decoder.mask_token": "decoder.mask_token",
}
_HF_PREFIXES = (
    ("decoder.decoder_embed.", "decoder.embed."),
    ("decoder.decoder_norm.", "decoder.norm."),
    ("decoder.decoder_pred.", "decoder.pred."),
)


def _anymae_key_of_hugging_face(key: str) -> tuple[str, int | None]:
    """A ``ViTMAEForPreTraining`` key -> (the anymae key it is read from, the third of the fused qkv tensor for
    query / key / value, else None): :func:`from_hugging_face`'s renaming, key by key, so that export is its inverse."""
    key = key.removeprefix("vit.")
    if key in ("embeddings.position_embeddings", "decoder.decoder_pos_embed"):
        return ("encoder.pos_embed" if key.startswith("embeddings") else "decoder.pos_embed"), None
    m = re.match(
        r"(encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$", key
    )
    if not m:
        return rename_keys(key, _HF_PREFIXES, _HF_NAMES), None
    where, i, name, kind = m.groups()
    prefix = f"{'encoder' if where == 'encoder.layer' else 'decoder'}.blocks.{i}"
    qkv = re.fullmatch(r"attention\.attention\.(query|key|value)", name)
    if qkv:
        return f"{prefix}.attn.qkv.{kind}", ("query", "key", "value").index(qkv.group(1))
    return f"{prefix}.{_HF_BLOCK.get(name, name)}.{kind}", None


def hugging_face_config(model: MaskedAutoencoder) -> dict[str, Any]:
    """The ``ViTMAEConfig`` fields of an anymae image MAE (refused, naming the field, when ViTMAE cannot hold it)."""
    cfg = model.config["model"]
    tok = cfg.get("tokenizer", {})
    wrong = {
        "model.modality": (cfg.get("modality"), "image"),
        "model.cls_token": (cfg.get("cls_token", True), True),
        "model.decoder": (cfg.get("decoder", "global"), "global"),
        "model.qkv_bias": (cfg.get("qkv_bias", True), True),
    }
    bad = [f"{key}={have!r} (ViTMAE: {want!r})" for key, (have, want) in wrong.items() if have != want]
    size = tok.get("img_size", 224)
    if not isinstance(size, int) and len(set(size)) != 1:
        bad.append(f"model.tokenizer.img_size={size} (ViTMAE: square images)")
    if model.decoder is None:
        bad.append("no decoder (ViTMAEForPreTraining holds one; export an MAE with its decoder)")
    if bad:
        raise CheckpointError("cannot write a Hugging Face ViTMAE folder: " + "; ".join(bad))
    dim, dec = cfg["embed_dim"], cfg["decoder_embed_dim"]
    return {
        "model_type": "vit_mae",
        "architectures": ["ViTMAEForPreTraining"],
        "image_size": size if isinstance(size, int) else size[0],
        "patch_size": tok.get("patch_size", 16),
        "num_channels": tok.get("in_chans", 3),
        "hidden_size": dim,
        "num_hidden_layers": cfg["depth"],
        "num_attention_heads": cfg["num_heads"],
        "intermediate_size": round(dim * cfg.get("mlp_ratio", 4.0)),
        "decoder_hidden_size": dec,
        "decoder_num_hidden_layers": cfg["decoder_depth"],
        "decoder_num_attention_heads": cfg["decoder_num_heads"],
        "decoder_intermediate_size": round(dec * cfg.get("decoder_mlp_ratio", 4.0)),
        "layer_norm_eps": model.encoder.blocks[0].norm1.eps,
        "hidden_act": "gelu",
        "qkv_bias": True,
        "mask_ratio": cfg.get("mask_ratio", 0.75),
        "norm_pix_loss": cfg.get("norm_pix_loss", False),
    }


def hugging_face_keys(config: dict[str, Any]) -> list[str]:
    """The state-dict keys of a ``ViTMAEForPreTraining`` folder as the hub's facebook/vit-mae-* hold them (and as
    transformers 4 and 5 read them)."""
    block = [
        f"{name}.{kind}"
        for name in (
            "attention.attention.query", "attention.attention.key", "attention.attention.value",
            "attention.output.dense", "intermediate.dense", "output.dense", "layernorm_before", "layernorm_after",
        )
        for kind in ("weight", "bias")
    ]  # fmt: skip
    keys = ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings"]
    keys += [f"vit.embeddings.patch_embeddings.projection.{kind}" for kind in ("weight", "bias")]
    keys += [f"vit.encoder.layer.{i}.{b}" for i in range(config["num_hidden_layers"]) for b in block]
    keys += ["vit.layernorm.weight", "vit.layernorm.bias", "decoder.mask_token", "decoder.decoder_pos_embed"]
    keys += [f"decoder.decoder_embed.{kind}" for kind in ("weight", "bias")]
    keys += [f"decoder.decoder_layers.{j}.{b}" for j in range(config["decoder_num_hidden_layers"]) for b in block]
    keys += [f"decoder.{name}.{kind}" for name in ("decoder_norm", "decoder_pred") for kind in ("weight", "bias")]
    return keys


def to_hugging_face(model: MaskedAutoencoder, keys: list[str]) -> dict[str, Tensor]:
    """An anymae image MAE -> the ``ViTMAEForPreTraining`` state dict with ``keys``, the fused qkv split into
    query / key / value and the fixed tables written from the model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["encoder.pos_embed"] = model.encoder.pos_embed.detach().cpu()  # (1, 1 + L, D)
    state["decoder.pos_embed"] = model.decoder.get_buffer("pos_embed").detach().cpu()  # (1, 1 + L, D_dec)
    out: dict[str, Tensor] = {}
    for key in keys:
        source, third = _anymae_key_of_hugging_face(key)
        if source not in state:
            raise CheckpointError(f"ViTMAE's {key} has no anymae tensor ({source})")
        value = state[source]
        out[key] = (value.chunk(3, dim=0)[third] if third is not None else value).contiguous().clone()  # q|k|v rows
    unused = sorted(set(state) - {_anymae_key_of_hugging_face(k)[0] for k in keys})
    if unused:
        raise CheckpointError(f"the ViTMAE layout has no place for {unused[:10]}")
    return out
