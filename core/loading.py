"""One front door for checkpoints: ``load_model`` (pre-trained MAEs) and ``load_classifier_file`` (classifiers),
from anymae files, plugin formats, official MAE / timm ViT state dicts and Hugging Face ViTMAE folders."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .build import build_model
from .checkpoint import CheckpointError, read_checkpoint, read_safetensors
from .config import resolve_model_config
from .interop import (
    from_hugging_face,
    from_official_classifier,
    from_official_mae,
    is_official_classifier,
    is_official_mae,
)
from .model import MaskedAutoencoder

__all__ = ["load_any", "load_classifier_file", "load_model", "load_state_dict_checked", "read_payload"]

CHECKPOINT_FORMAT = "anymae"
CLASSIFIER_FORMAT = "anymae-classifier"  # = task_classify.CLASSIFIER_FORMAT (not imported: it imports timm.data)
FIXED_TABLE_TOLERANCE = 1e-4  # a stored table this close to the sin-cos one is the fixed table (float32 rounding)


def load_model(
    source: str | Path,
    *,
    norm_pix_loss: bool | None = None,
    num_heads: int | None = None,
    strict: bool = True,
    registry: Any = None,
) -> MaskedAutoencoder:
    """Load an MAE from an anymae checkpoint (``.pt``, or ``.safetensors`` from ``anymae export``), a format a
    plugin registered (e.g. VideoMAE, AudioMAE), an official MAE ``.pth`` (or a timm ViT state dict, ``.pth``
    or ``.safetensors``) or a Hugging Face ViTMAE folder.

    The architecture is read from the checkpoint's config, or inferred from the tensors (official files:
    width, depth, patch, grid, decoder; heads from the official table or ``num_heads``). A file without
    decoder weights gives an encoder-only model. ``norm_pix_loss`` overrides the stored/assumed target
    (official files: ``mae_visualize_*`` are raw-pixel models, the others norm-pix). Missing or unexpected
    keys raise :class:`CheckpointError` listing them unless ``strict=False``, which loads what matches and
    warns.
    """
    path = Path(source)
    registry = _registry(registry)
    payload = None if path.is_dir() else read_payload(path)
    return _model_from_payload(
        path, payload, norm_pix_loss=norm_pix_loss, num_heads=num_heads, strict=strict, registry=registry
    )


def load_classifier_file(source: str | Path, *, num_heads: int | None = None, registry: Any = None) -> nn.Module:
    """A classifier -> the model, in eval mode: an ``anymae finetune`` / ``linprobe`` checkpoint (``.pt``, or
    ``.safetensors`` from ``anymae export`` / ``anymae convert``), an official ``mae_finetuned_*`` or linear-probe
    file, or a timm ViT classifier state dict (``head.*`` plus ``fc_norm.*`` or ``norm.*``).

    ``anymae eval`` uses it (through ``finetune.load_classifier``). A learned position table (official
    fine-tuning trains ``pos_embed``) is kept as a parameter ``encoder.pos_embed``; one equal to the fixed
    sin-cos table is dropped, as anymae recomputes it.
    """
    path = Path(source)
    payload = read_payload(path)
    model = _classifier_from_payload(path, payload, num_heads=num_heads, registry=_registry(registry))
    if model is None:
        raise CheckpointError(
            f"{path} is not a classifier checkpoint (format={CLASSIFIER_FORMAT!r}, or an official / timm ViT state "
            "dict with head.*); fine-tune or linearly probe a pre-trained checkpoint first (anymae finetune / "
            "anymae linprobe)"
        )
    return model


def load_any(
    source: str | Path, *, num_heads: int | None = None, strict: bool = True, registry: Any = None
) -> nn.Module:
    """A pre-trained MAE (:func:`load_model`) or a classifier (:func:`load_classifier_file`), whichever the
    source holds; the file is read once. Used by ``anymae convert`` and ``anymae export``."""
    path = Path(source)
    registry = _registry(registry)
    payload = None if path.is_dir() else read_payload(path)
    if payload is not None:
        model = _classifier_from_payload(path, payload, num_heads=num_heads, registry=registry)
        if model is not None:
            return model
    return _model_from_payload(path, payload, norm_pix_loss=None, num_heads=num_heads, strict=strict, registry=registry)


def read_payload(path: Path) -> Any:
    """A checkpoint file -> what it holds: ``torch.load(weights_only=True)`` for pickles; for ``.safetensors`` an
    anymae payload (the config from the metadata) or, for other files (e.g. timm's), the plain state dict."""
    if path.suffix != ".safetensors":
        return read_checkpoint(path)
    state, config = read_safetensors(path)
    if not config:
        return state
    if "model" not in config:
        raise CheckpointError(f"{path}: its anymae metadata has no 'model' section (write it with `anymae export`)")
    kind = CLASSIFIER_FORMAT if "classifier" in config else CHECKPOINT_FORMAT
    return {"format": kind, "config": config, "model": state}


def _registry(registry: Any) -> Any:
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    return registry


def _model_from_payload(
    path: Path, payload: Any, *, norm_pix_loss: bool | None, num_heads: int | None, strict: bool, registry: Any
) -> MaskedAutoencoder:
    if payload is None:  # a folder
        plugin_format = _plugin_format(path, None, registry)
        if plugin_format is not None:
            return _plugin_load(plugin_format, path, None, strict=strict, registry=registry, num_heads=num_heads)
        return _load_hugging_face(path, norm_pix_loss=norm_pix_loss, strict=strict, registry=registry)
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        raise CheckpointError(
            f"{path} is a classifier checkpoint (anymae finetune / linprobe), not a pre-trained MAE: evaluate it "
            "with `anymae eval`, or convert it with `anymae convert`"
        )
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        model_raw = dict(payload["config"]["model"])
        state = payload["model"]
        tables: dict[str, Tensor] = {}
    else:
        plugin_format = _plugin_format(path, payload, registry)
        if plugin_format is not None:
            return _plugin_load(plugin_format, path, payload, strict=strict, registry=registry, num_heads=num_heads)
        state = _unwrap_state(payload)
        if state is None or not is_official_mae(state):
            anymae = (
                "has no anymae config in its metadata (write it with `anymae export`)"
                if path.suffix == ".safetensors"
                else "is not an anymae checkpoint (a dict with format='anymae')"
            )
            raise CheckpointError(
                f"{path} {anymae} nor an official MAE / timm ViT state dict (keys patch_embed.proj.weight, "
                "blocks.N..., cls_token, optionally under 'model')"
            )
        default_norm_pix = "visualize" not in path.name  # released mae_visualize_* models use raw pixels
        model_raw, state, tables = _official(from_official_mae, path, state, num_heads, norm_pix_loss=default_norm_pix)
    if norm_pix_loss is not None:
        model_raw["norm_pix_loss"] = norm_pix_loss
    model = _build_and_load(model_raw, state, tables, source=str(path), strict=strict, registry=registry)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        model.config["data"] = payload["config"].get("data") or {}  # input normalization for visualize
    return model


def _unwrap_state(payload: Any) -> dict[str, Any] | None:
    """The state dict of a payload: itself, or under ``model`` / ``state_dict`` (official and timm files)."""
    state = payload.get("model", payload.get("state_dict", payload)) if isinstance(payload, dict) else None
    return state if isinstance(state, dict) else None


def _official(convert: Any, path: Path, state: dict[str, Tensor], num_heads: int | None, **kwargs: Any) -> Any:
    """Run an official-layout importer, turning its ``ValueError`` into a :class:`CheckpointError` naming ``path``.

    A ``<name>.timm.json`` next to the file (written by ``anymae convert --to timm``) supplies what the tensors
    do not show: the heads (unless ``num_heads`` is given) and the LayerNorm eps.
    """
    spec_file = path.with_name(path.stem + ".timm.json")
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    try:
        result = convert(state, num_heads=num_heads or spec.get("kwargs", {}).get("num_heads"), **kwargs)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if "norm_eps" in spec:
        result[0]["norm_eps"] = spec["norm_eps"]
    return result


def _classifier_from_payload(path: Path, payload: Any, *, num_heads: int | None, registry: Any) -> nn.Module | None:
    """The classifier in ``payload`` (anymae or official / timm layout), or None if it holds none."""
    from .classify import classifier_from_config

    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        config, state = dict(payload["config"]), dict(payload["model"])
        stored = state.pop("encoder.pos_embed", None)
    elif isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return None
    else:
        state = _unwrap_state(payload)
        if state is None or not is_official_classifier(state):
            return None
        model_raw, head, state, stored = _official(from_official_classifier, path, state, num_heads)
        config = {"model": model_raw, "classifier": head}
    try:
        model = classifier_from_config(config, registry)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its classifier config cannot be rebuilt: {exc}") from None
    learned = stored is not None and _use_stored_table(model.encoder, stored, source=str(path))
    if learned:
        state["encoder.pos_embed"] = stored
    load_state_dict_checked(model, state, source=str(path), strict=True)
    model.config = {
        **config,
        "model": model.config["model"],  # resolved: every field explicit
        "classifier": {**model.config["classifier"], **config["classifier"], "learned_pos_embed": learned},
    }
    return model.eval()


def _use_stored_table(encoder: nn.Module, stored: Tensor, *, source: str) -> bool:
    """Whether a classifier's stored position table is learned. The fixed sin-cos table is not (anymae
    recomputes it); any other replaces the fixed buffer by a parameter ``encoder.pos_embed`` to load it into."""
    fixed = encoder.get_buffer("pos_embed")
    if tuple(stored.shape) != tuple(fixed.shape):
        raise CheckpointError(
            f"{source}: pos_embed has shape {tuple(stored.shape)}, expected {tuple(fixed.shape)} (prefix + grid)"
        )
    if (stored.float() - fixed).abs().max().item() <= FIXED_TABLE_TOLERANCE:
        return False
    del encoder.pos_embed  # the fixed, non-persistent buffer
    encoder.pos_embed = nn.Parameter(torch.zeros_like(fixed))  # (1, num_prefix + L, D), learned; loaded next
    return True


def _plugin_load(fmt: Any, path: Path, payload: Any, *, strict: bool, registry: Any, num_heads: int | None) -> Any:
    """``fmt.load``; a ``num_heads`` hint (not visible in the tensors) goes to formats whose ``load`` takes it."""
    kwargs: dict[str, Any] = {"strict": strict, "registry": registry}
    if num_heads is not None and "num_heads" in inspect.signature(fmt.load).parameters:
        kwargs["num_heads"] = num_heads
    return fmt.load(path, payload, **kwargs)


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
        state, _ = read_safetensors(folder / "model.safetensors")
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
    if diff > FIXED_TABLE_TOLERANCE:
        raise CheckpointError(
            f"{source}: stored {key} differs from the fixed 2-D sin-cos table by {diff:.3g}; "
            "anymae's pre-training MAE uses fixed tables (a learned table is not supported here)"
        )


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, Tensor], *, source: str, strict: bool) -> None:
    """Load ``state`` into ``model``; refuse missing, unexpected or mis-shaped keys unless ``strict=False``."""
    expected = model.state_dict()
    check_state_dict(expected, state, source=source, strict=strict)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def check_state_dict(expected: dict[str, Tensor], state: dict[str, Tensor], *, source: str, strict: bool) -> None:
    """Refuse mis-shaped keys, and missing or unexpected ones unless ``strict=False`` (then warn), comparing
    ``state`` with a model's ``expected`` state dict (sharded DTensors carry their full shapes)."""
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
            stacklevel=4,
        )


def _head(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"
