"""``load_model``: one front door for anymae checkpoints, official MAE files and Hugging Face ViTMAE folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .build import build_model
from .checkpoint import CheckpointError, read_checkpoint, read_safetensors
from .config import resolve_model_config
from .interop import from_hugging_face, from_official_mae, is_official_mae
from .model import MaskedAutoencoder

__all__ = ["load_model", "load_state_dict_checked"]

CHECKPOINT_FORMAT = "anymae"


def load_model(
    source: str | Path,
    *,
    norm_pix_loss: bool | None = None,
    num_heads: int | None = None,
    strict: bool = True,
    registry: Any = None,
) -> MaskedAutoencoder:
    """Load an MAE from an anymae checkpoint (``.pt``, or ``.safetensors`` from ``anymae export``), a format a
    plugin registered (e.g. VideoMAE, AudioMAE), an official MAE ``.pth`` or a Hugging Face ViTMAE folder.

    The architecture is read from the checkpoint's config, or inferred from the tensors (official files:
    width, depth, patch, grid, decoder; heads from the official table or ``num_heads``). A file without
    decoder weights gives an encoder-only model. ``norm_pix_loss`` overrides the stored/assumed target
    (official files: ``mae_visualize_*`` are raw-pixel models, the others norm-pix). Missing or unexpected
    keys raise :class:`CheckpointError` listing them unless ``strict=False``, which loads what matches and
    warns.
    """
    path = Path(source)
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    if path.is_dir():
        plugin_format = _plugin_format(path, None, registry)
        if plugin_format is not None:
            return plugin_format.load(path, None, strict=strict, registry=registry)
        return _load_hugging_face(path, norm_pix_loss=norm_pix_loss, strict=strict, registry=registry)
    if path.suffix == ".safetensors":
        state, config = read_safetensors(path)
        if "model" not in config:
            raise CheckpointError(f"{path}: no anymae config in its metadata (write it with `anymae export`)")
        payload = {"format": CHECKPOINT_FORMAT, "config": config, "model": state}
    else:
        payload = read_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        model_raw = dict(payload["config"]["model"])
        state = payload["model"]
        tables: dict[str, Tensor] = {}
    else:
        plugin_format = _plugin_format(path, payload, registry)
        if plugin_format is not None:
            return plugin_format.load(path, payload, strict=strict, registry=registry)
        state = payload.get("model", payload.get("state_dict", payload)) if isinstance(payload, dict) else None
        if not isinstance(state, dict) or not is_official_mae(state):
            raise CheckpointError(
                f"{path} is neither an anymae checkpoint (a dict with format='anymae') nor an official MAE "
                "state dict (keys cls_token, patch_embed.proj.weight, blocks.N..., optionally under 'model')"
            )
        default_norm_pix = "visualize" not in path.name  # released mae_visualize_* models use raw pixels
        model_raw, state, tables = from_official_mae(state, num_heads=num_heads, norm_pix_loss=default_norm_pix)
    if norm_pix_loss is not None:
        model_raw["norm_pix_loss"] = norm_pix_loss
    model = _build_and_load(model_raw, state, tables, source=str(path), strict=strict, registry=registry)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        model.config["data"] = payload["config"].get("data") or {}  # input normalization for visualize
    return model


def _plugin_format(path: Path, payload: Any, registry: Any) -> Any:
    """The first checkpoint format registered by a plugin that recognises ``path`` / ``payload``."""
    for name, entry in registry.checkpoint_formats.items():
        try:
            if entry.obj.detect(path, payload):
                return entry.obj
        except Exception as exc:  # a plugin's detector must not hide the other formats
            message = f"checkpoint format {name!r} (plugin {entry.plugin!r}) failed to inspect {path}: {exc}"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    return None


def _load_hugging_face(folder: Path, *, norm_pix_loss: bool | None, strict: bool, registry: Any) -> MaskedAutoencoder:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} is a folder without config.json (expected a Hugging Face ViTMAE folder)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") not in (None, "vit_mae"):
        raise CheckpointError(f"{config_file}: model_type {config.get('model_type')!r} is not 'vit_mae'")
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = read_checkpoint(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin")
    model_raw, state, tables = from_hugging_face(config, state)
    if norm_pix_loss is not None:
        model_raw["norm_pix_loss"] = norm_pix_loss
    return _build_and_load(model_raw, state, tables, source=str(folder), strict=strict, registry=registry)


def _build_and_load(
    model_raw: dict[str, Any],
    state: dict[str, Tensor],
    tables: dict[str, Tensor],
    *,
    source: str,
    strict: bool,
    registry: Any,
) -> MaskedAutoencoder:
    cfg = resolve_model_config(model_raw, registry)
    with_decoder = any(k.startswith("decoder.") for k in state)
    model = build_model(cfg, registry=registry, with_decoder=with_decoder)
    for key, stored in tables.items():
        if with_decoder or not key.startswith("decoder."):
            _check_fixed_table(key, stored, model.get_buffer(key), source)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def _check_fixed_table(key: str, stored: Tensor, ours: Tensor, source: str) -> None:
    if tuple(stored.shape) != tuple(ours.shape):
        raise CheckpointError(f"{source}: {key} has shape {tuple(stored.shape)}, expected {tuple(ours.shape)}")
    diff = (stored.float() - ours).abs().max().item()
    if diff > 1e-4:
        raise CheckpointError(
            f"{source}: stored {key} differs from the fixed 2-D sin-cos table by {diff:.3g}; "
            "anymae's pre-training MAE uses fixed tables (a learned table is not supported here)"
        )


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, Tensor], *, source: str, strict: bool) -> None:
    """Load ``state`` into ``model``; refuse missing, unexpected or mis-shaped keys unless ``strict=False``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source}: shapes differ for {len(mismatched)} keys: " + "; ".join(mismatched[:10]))
    if (missing or unexpected) and strict:
        raise CheckpointError(
            f"{source} does not match the model: {len(missing)} missing keys {_head(missing)}, "
            f"{len(unexpected)} unexpected keys {_head(unexpected)}; pass strict=False to load the rest anyway"
        )
    if missing or unexpected:
        warnings.warn(
            f"partial load from {source}: missing {_head(missing)}, unexpected {_head(unexpected)}",
            stacklevel=3,
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _head(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"
