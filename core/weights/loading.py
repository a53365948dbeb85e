"""One front door for checkpoints: ``load_model`` (pre-trained MAEs) and ``load_classifier_file`` (classifiers).

anymae's own files (``.pt`` checkpoints, ``.safetensors`` exports) are read here; every other layout is a
checkpoint format a modality registers (:class:`~anymae.core.weights.formats.CheckpointFormat`): official MAE, timm ViT
and Hugging Face ViTMAE (image plugin), VideoMAE (video), AudioMAE (audio), and any third-party plugin's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from anymae.core.io.checkpoint import (
    CHECKPOINT_FORMAT,
    CLASSIFIER_FORMAT,
    CheckpointError,
    check_state_dict,
    load_state_dict_checked,
    read_payload,
)
from anymae.core.io.hub import resolve_source
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.formats import (
    CheckpointFormat,
    LoadOptions,
    build_and_load,
    build_classifier_and_load,
    ordered_formats,
)
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "CHECKPOINT_FORMAT",
    "CLASSIFIER_FORMAT",
    "check_state_dict",
    "load_any",
    "load_classifier_file",
    "load_model",
    "load_state_dict_checked",
    "model_from_payload",
    "read_payload",
]


def load_model(
    source: str | Path,
    *,
    norm_pix_loss: bool | None = None,
    num_heads: int | None = None,
    strict: bool = True,
    registry: Registry | None = None,
) -> MaskedAutoencoder:
    """Load an MAE from an anymae checkpoint (``.pt``, or ``.safetensors`` from ``anymae export``), a hub name
    (``hf-hub:ORG/NAME[@REVISION]``, :mod:`anymae.core.io.hub`) or any registered checkpoint format: an
    official MAE ``.pth`` or timm ViT state dict (``.pth`` or
    ``.safetensors``), a Hugging Face ViTMAE folder, VideoMAE and AudioMAE files, a third-party plugin's format.

    The architecture is read from the checkpoint's config, or inferred from the tensors (official files:
    width, depth, patch, grid, decoder; heads from the official table or ``num_heads``). A file without
    decoder weights gives an encoder-only model. ``norm_pix_loss`` overrides the stored/assumed target
    (official files: ``mae_visualize_*`` are raw-pixel models, the others norm-pix). Missing or unexpected
    keys raise :class:`CheckpointError` listing them unless ``strict=False``, which loads what matches and
    warns.
    """
    path = resolve_source(source)
    payload = None if path.is_dir() else read_payload(path)
    return model_from_payload(
        path, payload, norm_pix_loss=norm_pix_loss, num_heads=num_heads, strict=strict, registry=registry
    )


def load_classifier_file(
    source: str | Path, *, num_heads: int | None = None, registry: Registry | None = None
) -> nn.Module:
    """A classifier -> the model, in eval mode: an ``anymae finetune`` / ``linprobe`` checkpoint (``.pt``, or
    ``.safetensors`` from ``anymae export`` / ``anymae convert``), or a classifier a registered format reads
    (an official ``mae_finetuned_*`` or linear-probe file, a timm ViT classifier state dict).

    ``anymae eval`` uses it (through ``evaluation.load_classifier``). A learned position table (official
    fine-tuning trains ``pos_embed``) is kept as a parameter ``encoder.pos_embed``; one equal to the fixed
    sin-cos table is dropped, as anymae recomputes it.
    """
    path = resolve_source(source)
    payload = read_payload(path)
    model = _classifier_from_payload(path, payload, num_heads=num_heads, registry=resolve_registry(registry))
    if model is None:
        raise CheckpointError(
            f"{path} is not a classifier checkpoint (format={CLASSIFIER_FORMAT!r}, or an official / timm ViT state "
            "dict with head.*); fine-tune or linearly probe a pre-trained checkpoint first (anymae finetune / "
            "anymae linprobe)"
        )
    return model


def load_any(
    source: str | Path, *, num_heads: int | None = None, strict: bool = True, registry: Registry | None = None
) -> nn.Module:
    """A pre-trained MAE (:func:`load_model`) or a classifier (:func:`load_classifier_file`), whichever the
    source holds; the file is read once. Used by ``anymae convert`` and ``anymae export``."""
    path = resolve_source(source)
    registry = resolve_registry(registry)
    payload = None if path.is_dir() else read_payload(path)
    if payload is not None:
        model = _classifier_from_payload(path, payload, num_heads=num_heads, registry=registry)
        if model is not None:
            return model
    return model_from_payload(path, payload, norm_pix_loss=None, num_heads=num_heads, strict=strict, registry=registry)


def model_from_payload(
    path: Path,
    payload: Any,
    *,
    norm_pix_loss: bool | None = None,
    num_heads: int | None = None,
    strict: bool = True,
    registry: Registry | None = None,
) -> MaskedAutoencoder:
    """The pre-trained MAE of an already read source (``payload`` from :func:`read_payload`, None for a folder):
    anymae's own layout, else the first registered format that recognises it."""
    registry = resolve_registry(registry)
    if _is_anymae(payload, CLASSIFIER_FORMAT):
        raise CheckpointError(
            f"{path} is a classifier checkpoint (anymae finetune / linprobe), not a pre-trained MAE: evaluate it "
            "with `anymae eval`, or convert it with `anymae convert`"
        )
    if _is_anymae(payload, CHECKPOINT_FORMAT):
        model_raw = dict(payload["config"]["model"])
        if norm_pix_loss is not None:
            model_raw["norm_pix_loss"] = norm_pix_loss
        model = build_and_load(model_raw, payload["model"], source=str(path), strict=strict, registry=registry)
        model.config["data"] = payload["config"].get("data") or {}  # input normalization for visualize
        return model
    fmt = _detect(path, payload, registry)
    if fmt is None:
        raise CheckpointError(_unknown_source(path, payload, registry))
    options = LoadOptions(strict=strict, num_heads=num_heads, norm_pix_loss=norm_pix_loss)
    return fmt.load(path, payload, options=options, registry=registry)


def _is_anymae(payload: Any, kind: str) -> bool:
    return isinstance(payload, dict) and payload.get("format") == kind


def _classifier_from_payload(
    path: Path, payload: Any, *, num_heads: int | None, registry: Registry
) -> nn.Module | None:
    """The classifier in ``payload`` (anymae's or a registered format's), or None if it holds none."""
    if _is_anymae(payload, CLASSIFIER_FORMAT):
        state = dict(payload["model"])
        stored = state.pop("encoder.pos_embed", None)
        return build_classifier_and_load(dict(payload["config"]), state, stored, source=str(path), registry=registry)
    if _is_anymae(payload, CHECKPOINT_FORMAT):
        return None
    for _, _, fmt in ordered_formats(registry):
        model = fmt.load_classifier(path, payload, num_heads=num_heads, registry=registry)
        if model is not None:
            return model
    return None


def _detect(path: Path, payload: Any, registry: Registry) -> CheckpointFormat | None:
    """The first registered format that recognises ``path`` / ``payload``. A detector that raises is named in a
    warning and skipped: one plugin's broken detector must not hide the other formats."""
    for name, plugin, fmt in ordered_formats(registry):
        try:
            if fmt.detect(path, payload):
                return fmt
        except Exception as exc:
            message = f"checkpoint format {name!r} (plugin {plugin!r}) failed to inspect {path}: {exc}"
            warnings.warn(message, RuntimeWarning, stacklevel=4)
    return None


def _unknown_source(path: Path, payload: Any, registry: Registry) -> str:
    """Why no reader took the source, naming the formats that were asked."""
    formats = ", ".join(registry.checkpoint_formats) or "none"
    if payload is None:
        return f"{path} is a folder that no registered checkpoint format reads (formats asked: {formats})"
    anymae = (
        "has no anymae config in its metadata (write it with `anymae export`)"
        if path.suffix == ".safetensors"
        else "is not an anymae checkpoint (a dict with format='anymae')"
    )
    return (
        f"{path} {anymae} nor a layout a registered checkpoint format reads (formats asked: {formats}; the "
        "official MAE / timm ViT state dict has keys patch_embed.proj.weight, blocks.N..., cls_token, optionally "
        "under 'model')"
    )
