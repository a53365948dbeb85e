"""Converters from VideoMAE's pre-training checkpoints and Hugging Face ``VideoMAE`` to anymae (reference section 5).

Both give an anymae video MAE with ``cls_token: false``, VideoMAE's 1-D sinusoid positions (``videomae``,
recomputed: VideoMAE does not store them), tube masking at 0.9, the ``videomae`` decoder (no bias on the
encoder-to-decoder Linear) and ``pred_masked_only`` (its head runs on masked tokens only).

VideoMAE's attention has a bias on q and v but none on k (``q_bias``, ``v_bias``); anymae's fused qkv gets
``cat(q_bias, 0, v_bias)``. A bias on k adds the same amount to every key's score for a given query, which
the softmax cancels, so the zero slot never changes an output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anymae.core.io.checkpoint import CheckpointError, read_checkpoint
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.formats import (
    CheckpointFormat,
    Export,
    LoadOptions,
    build_and_load,
    count_blocks,
    hugging_face_widths,
    infer_heads,
    read_hugging_face_folder,
    rename_keys,
    unwrap_state,
)
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["from_hugging_face_videomae", "from_videomae", "is_videomae", "load_videomae", "to_videomae"]

# Heads are not visible in the tensors: VideoMAE's registered pre-training models (S, B, L, H).
ENCODER_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}

_BLOCK_NAMES = (  # Hugging Face layer part -> timm Block part
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


_HF_NAMES = {"mask_token": "decoder.mask_token", "encoder_to_decoder.weight": "decoder.embed.weight"}
_HF_PREFIXES = (
    ("embeddings.patch_embeddings.projection.", "tokenizer.proj."),
    ("layernorm.", "encoder.norm."),
    ("decoder.norm.", "decoder.norm."),
    ("decoder.head.", "decoder.pred."),
)


def is_videomae(state: dict[str, Any]) -> bool:
    return "encoder.patch_embed.proj.weight" in state


def _unwrap(payload: Any) -> dict[str, Tensor]:
    """The state dict inside VideoMAE's ``{'model': ...}`` / DeepSpeed ``{'module': ...}`` files."""
    state = unwrap_state(payload, ("model", "module", "state_dict"))
    if state is None:
        raise CheckpointError(f"expected a state dict, got {type(payload).__name__}")
    return state


def _fused_bias(q: Tensor | None, v: Tensor | None, dim: int) -> Tensor | None:
    if q is None and v is None:
        return None
    zeros = torch.zeros(dim, dtype=(q if q is not None else v).dtype)
    return torch.cat([q if q is not None else zeros, zeros, v if v is not None else zeros])


def from_videomae(
    payload: Any,
    *,
    num_frames: int = 16,
    img_size: int | tuple[int, int] = 224,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    normalize_target: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """An original VideoMAE pre-training state dict (optionally under ``model``/``module``) ->
    (plain-data ``model`` config section, anymae state dict).

    ``num_frames`` and ``img_size`` are not stored in the file (no position table); the defaults are the
    released models' 16 x 224 x 224. ``normalize_target`` is VideoMAE's ``--normlize_target`` (default on).
    """
    state = _unwrap(payload)
    if not is_videomae(state):
        raise CheckpointError("not a VideoMAE pre-training state dict (no encoder.patch_embed.proj.weight)")
    dim, chans, tubelet, patch, _ = state["encoder.patch_embed.proj.weight"].shape
    model: dict[str, Any] = {
        "modality": "video",
        "tokenizer": {
            "num_frames": num_frames,
            "img_size": img_size if isinstance(img_size, int) else list(img_size),
            "patch_size": patch,
            "tubelet_size": tubelet,
            "in_chans": chans,
            "pos_embed": "videomae",
        },
        "masking": "tube",
        "mask_ratio": 0.9,
        "target": "videomae" if normalize_target else "videomae_pixels",
        "cls_token": False,
        "decoder": "videomae",
        "pred_masked_only": True,
        "embed_dim": dim,
        "depth": count_blocks(state, r"encoder\.blocks\.(\d+)\."),
        "num_heads": infer_heads(dim, ENCODER_HEADS, num_heads, what="encoder"),
        "mlp_ratio": state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "encoder.blocks.0.attn.q_bias" in state,
        "norm_eps": 1e-6,  # VideoMAE: partial(nn.LayerNorm, eps=1e-6) everywhere
    }
    if "encoder_to_decoder.weight" in state:
        dec = state["encoder_to_decoder.weight"].shape[0]
        model.update(
            decoder_embed_dim=dec,
            decoder_depth=count_blocks(state, r"decoder\.blocks\.(\d+)\."),
            decoder_num_heads=infer_heads(dec, DECODER_HEADS, decoder_num_heads, what="decoder"),
            decoder_mlp_ratio=state["decoder.blocks.0.mlp.fc1.weight"].shape[0] / dec,
        )
    return model, _videomae_state(state)


# VideoMAE's key prefixes -> anymae's
_VIDEOMAE_PREFIXES = (
    ("encoder.patch_embed.proj.", "tokenizer.proj."),
    ("encoder.blocks.", "encoder.blocks."),
    ("encoder.norm.", "encoder.norm."),
    ("encoder_to_decoder.", "decoder.embed."),
    ("decoder.blocks.", "decoder.blocks."),
    ("decoder.norm.", "decoder.norm."),
    ("decoder.head.", "decoder.pred."),
)


def _videomae_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VideoMAE's weights under anymae's names, each block's separate q and v biases fused into the qkv bias."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if re.search(r"\.attn\.[qv]_bias$", key):
            continue  # fused below
        new = rename_keys(key, _VIDEOMAE_PREFIXES, {"mask_token": "decoder.mask_token"})
        converted[new] = value  # anything unrecognised keeps its name and is reported as unexpected
        if key.endswith(".attn.qkv.weight"):
            prefix = key[: -len("qkv.weight")]
            bias = _fused_bias(state.get(prefix + "q_bias"), state.get(prefix + "v_bias"), value.shape[1])
            if bias is not None:
                converted[new[: -len("weight")] + "bias"] = bias
    return converted


def from_hugging_face_videomae(
    config: dict[str, Any], state: dict[str, Tensor]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face ``VideoMAEForPreTraining`` / ``VideoMAEModel`` config.json + weights ->
    (``model`` config section, anymae state dict). Reads both the transformers-5 layout (``query.bias``,
    ``value.bias``) and the older one (``q_bias``, ``v_bias``)."""
    state = {k.removeprefix("videomae."): v for k, v in state.items()}
    if config.get("use_mean_pooling", True) and "layernorm.weight" not in state:
        raise ValueError(
            "this VideoMAE has no final encoder LayerNorm (use_mean_pooling: true, a classification backbone); "
            "anymae's encoder always ends with one: convert a pre-training model (use_mean_pooling: false)"
        )
    size = config.get("image_size", 224)
    norm_pix = config.get("norm_pix_loss", True)
    model: dict[str, Any] = {
        "modality": "video",
        "tokenizer": {
            "num_frames": config.get("num_frames", 16),
            "img_size": size if isinstance(size, int) else list(size),
            "patch_size": config.get("patch_size", 16),
            "tubelet_size": config.get("tubelet_size", 2),
            "in_chans": config.get("num_channels", 3),
            "pos_embed": "videomae",
        },
        "masking": "tube",
        "mask_ratio": 0.9,
        "target": "videomae" if norm_pix else "videomae_pixels",
        "cls_token": False,
        "decoder": "videomae",
        "pred_masked_only": True,
        # Hugging Face's default eps (1e-12) unless the config says; VideoMAE's own is 1e-6.
        **hugging_face_widths(config, decoder="encoder_to_decoder.weight" in state),
        "qkv_bias": config.get("qv_bias", config.get("qkv_bias", True)),
    }
    if "encoder_to_decoder.weight" in state:
        # VideoMAEDecoder.norm is a plain nn.LayerNorm: PyTorch's eps, not layer_norm_eps.
        model["decoder_options"] = {"head_norm_eps": 1e-5}
    return model, _hugging_face_state(state)


def _hugging_face_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face VideoMAE's weights under anymae's names; each block's query, key and value Linear fused into
    one qkv (weights stacked, the bias zero for the key)."""
    converted: dict[str, Tensor] = {}
    attention: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$", key)
        if m:
            where, i, rest = m.groups()
            prefix = f"{'encoder' if where == 'encoder.layer' else 'decoder'}.blocks.{i}."
            if rest.startswith("attention.attention."):
                attention.setdefault(prefix, {})[rest.removeprefix("attention.attention.")] = value
                continue
            for old, new in _BLOCK_NAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            converted[prefix + rest] = value
            continue
        converted[rename_keys(key, _HF_PREFIXES, _HF_NAMES)] = value
    for prefix, parts in attention.items():
        known = {"query.weight", "key.weight", "value.weight", "query.bias", "value.bias", "q_bias", "v_bias"}
        for name in sorted(set(parts) - known):
            converted[f"{prefix}attention.attention.{name}"] = parts[name]  # reported as unexpected
        converted[prefix + "attn.qkv.weight"] = torch.cat(
            [parts[n] for n in ("query.weight", "key.weight", "value.weight")]
        )
        bias = _fused_bias(
            parts.get("query.bias", parts.get("q_bias")),
            parts.get("value.bias", parts.get("v_bias")),
            parts["query.weight"].shape[0],
        )
        if bias is not None:
            converted[prefix + "attn.qkv.bias"] = bias
    return converted


def load_videomae(
    source: str | Path | dict[str, Tensor],
    *,
    config: dict[str, Any] | None = None,
    strict: bool = True,
    registry: Registry | None = None,
    **options: Any,
) -> MaskedAutoencoder:
    """An anymae model from a VideoMAE ``.pth`` file, a Hugging Face VideoMAE folder (config.json +
    model.safetensors / pytorch_model.bin) or an in-memory state dict (with ``config``: a Hugging Face
    config dict; without: an original VideoMAE state dict). ``options`` go to :func:`from_videomae`.

    Missing or unexpected keys raise :class:`CheckpointError` naming them (``strict=False`` loads the rest
    and warns).
    """
    name = "state dict" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        state = source
    elif Path(source).is_dir():
        config, state = read_hugging_face_folder(Path(source), model_type="videomae")
        if config.get("model_type") is None:
            raise CheckpointError(f"{Path(source) / 'config.json'}: model_type None is not 'videomae'")
    else:
        state = read_checkpoint(source)
    if config is not None:
        model_raw, converted = from_hugging_face_videomae(config, state)
    else:
        model_raw, converted = from_videomae(state, **options)
    return build_and_load(model_raw, converted, source=name, strict=strict, registry=resolve_registry(registry))


class VideoMAEFormat(CheckpointFormat):
    """The ``videomae`` checkpoint format: original VideoMAE ``.pth`` files and Hugging Face VideoMAE folders;
    writes VideoMAE's layout for ``anymae convert --to official`` of a video MAE."""

    export_targets: ClassVar[tuple[str, ...]] = ("official",)

    def detect(self, path: Path, payload: Any) -> bool:
        if payload is None:
            config = path / "config.json"
            return config.is_file() and json.loads(config.read_text()).get("model_type") == "videomae"
        state = unwrap_state(payload, ("model", "module", "state_dict"))
        return state is not None and is_videomae(state)

    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        """``norm_pix_loss`` is VideoMAE's ``--normlize_target`` for ``.pth`` files (a folder's config says it)."""
        source = path if payload is None else _unwrap(payload)
        hints: dict[str, Any] = {}
        if payload is not None:
            target = options.norm_pix_loss
            hints = {"num_heads": options.num_heads, "normalize_target": True if target is None else target}
        return load_videomae(source, strict=options.strict, registry=registry, **hints)

    def export(self, model: nn.Module, *, target: str, dest: Path, registry: Registry) -> Export | None:
        """An anymae video MAE -> VideoMAE's state dict; None for other models."""
        if model.config.get("model", {}).get("modality") != "video" or "classifier" in model.config:
            return None
        return Export(*to_videomae(model))


def to_videomae(model: MaskedAutoencoder) -> tuple[dict[str, Tensor], list[str]]:
    """An anymae video MAE -> (VideoMAE pre-training state dict, notes), the inverse of :func:`from_videomae`.

    The model must be VideoMAE's kind: no CLS token, the 1-D sinusoid positions (VideoMAE stores none) and
    the ``videomae`` decoder. The fused qkv bias is split into ``q_bias`` / ``v_bias``; a key bias that
    training gave it is dropped, which changes no output (the softmax cancels a per-query constant).
    """
    cfg = model.config["model"]
    wrong = {
        "model.cls_token": (cfg.get("cls_token", True), False),
        "model.tokenizer.pos_embed": (cfg.get("tokenizer", {}).get("pos_embed"), "videomae"),
        "model.decoder": (cfg.get("decoder"), "videomae") if model.decoder is not None else ("videomae", "videomae"),
    }
    bad = [f"{key}={have!r} (VideoMAE: {want!r})" for key, (have, want) in wrong.items() if have != want]
    if bad:
        raise CheckpointError(
            f"VideoMAE's layout (the official layout of a video MAE) cannot hold this model: {'; '.join(bad)}; "
            "keep it with --to anymae"
        )
    renames = (
        ("tokenizer.proj.", "encoder.patch_embed.proj."),
        ("encoder.", "encoder."),
        ("decoder.embed.", "encoder_to_decoder."),
        ("decoder.pred.", "decoder.head."),
        ("decoder.mask_token", "mask_token"),
        ("decoder.", "decoder."),
    )
    state: dict[str, Tensor] = {}
    notes: list[str] = []
    for key, value in model.state_dict().items():
        value = value.detach().cpu().clone()
        new = next(repl + key[len(old) :] for old, repl in renames if key.startswith(old))
        if key.endswith(".attn.qkv.bias"):
            q, k, v = value.chunk(3)
            prefix = new[: -len("qkv.bias")]
            state[prefix + "q_bias"], state[prefix + "v_bias"] = q, v
            if k.any():
                notes.append(f"{key}: the key third of the bias is dropped (VideoMAE has none; outputs unchanged)")
            continue
        state[new] = value
    tok = cfg["tokenizer"]
    notes.append(
        f"VideoMAE files do not record the clip shape: load with num_frames={tok['num_frames']}, "
        f"img_size={tok['img_size']}"
    )
    if len(notes) > 3:
        notes = [*notes[:2], f"... and {len(notes) - 3} more bias notes", notes[-1]]
    return state, notes
