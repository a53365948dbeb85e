"""A raw ``model`` / ``data`` section -> validated dataclasses: the modality's tokenizer and data sections, the
registered masking, target and decoder, and a composite's parts."""

from __future__ import annotations

import re
from typing import Any

from anymae.core.config.errors import ConfigError
from anymae.core.config.options import (
    DECODER_ARGUMENTS,
    MASKING_ARGUMENTS,
    check_decoder_options,
    check_masking_options,
    check_options,
)
from anymae.core.config.schema import Config, ContrastiveConfig, ModelConfig, PartConfig
from anymae.core.config.serialize import config_to_dict
from anymae.core.config.stream import composite_stream, data_section
from anymae.core.config.validate import from_dict
from anymae.plugins.manager import COMPOSITE, Registry, resolve_registry

__all__ = ["resolve_config", "resolve_model_config", "resolve_part_data"]


def resolve_config(raw: dict[str, Any], registry: Registry | None = None) -> Config:
    """Validate a raw mapping into a :class:`Config`, including the modality's own sections."""
    registry = resolve_registry(registry)
    raw = dict(raw)
    model_raw = raw.pop("model", None)
    data_raw = raw.pop("data", None)
    cfg = from_dict(Config, raw, "")
    cfg.model = resolve_model_config(model_raw, registry)
    if cfg.model.modality == COMPOSITE:
        cfg.data = resolve_part_data(cfg.model, data_raw, registry)
    else:
        cfg.data = data_section(registry.modality(cfg.model.modality).data_config, data_raw, "data")
    return cfg


def resolve_part_data(model: ModelConfig, raw: Any, registry: Registry) -> dict[str, Any]:
    """A composite's ``data``: one section per part (``data.<part>``), each its modality's data_config."""
    raw = dict(raw or {})
    stream = composite_stream(raw)  # shards, ...: every part of one item in one sample
    for key in raw:
        if key not in model.parts:
            raise ConfigError(
                f"unknown config key 'data.{key}': a composite's data has one section per part "
                f"({', '.join(model.parts)})"
            )
    data: dict[str, Any] = {
        name: from_dict(registry.modality(part.modality).data_config, raw.get(name), f"data.{name}")
        for name, part in model.parts.items()
    }
    if stream != type(stream)():
        data["stream"] = stream
    return data


def resolve_model_config(raw: Any, registry: Registry | None = None) -> ModelConfig:
    """The ``model`` section as plain data (e.g. from a checkpoint) -> a validated ModelConfig."""
    registry = resolve_registry(registry)
    raw = dict(raw or {})
    tokenizer_raw = raw.pop("tokenizer", None)
    cfg = from_dict(ModelConfig, raw, "model")
    if cfg.modality == COMPOSITE:
        return _resolve_composite(cfg, raw, tokenizer_raw, registry)
    for key in ("parts", "modality_dropout", "joint_decoder", "part_depth"):
        if getattr(cfg, key):
            raise ConfigError(f"config model.{key} is for model.modality: {COMPOSITE}; this model is {cfg.modality!r}")
    if cfg.contrastive != ContrastiveConfig():
        raise ConfigError(
            f"config model.contrastive is for model.modality: {COMPOSITE}; this model is {cfg.modality!r}"
        )
    try:
        modality = registry.modality(cfg.modality)
        registry.masking_strategy(cfg.masking)
        registry.target(cfg.target)
        decoder = registry.decoder(cfg.decoder)
    except KeyError as exc:
        raise ConfigError(f"config model: {exc.args[0]}") from None
    check_decoder_options(decoder, cfg.decoder_options)
    check_masking_options(registry.masking_strategy(cfg.masking), cfg.masking_options)
    cfg.tokenizer = from_dict(modality.tokenizer_config, tokenizer_raw, "model.tokenizer")
    return cfg


# ModelConfig keys that a composite sets per part (model.parts.<name>.<key>) or does not support.
_PER_PART = ("masking", "masking_options", "mask_ratio", "norm_pix_loss", "target", "decoder", "decoder_options",
             "pred_masked_only")  # fmt: skip
_NOT_COMPOSITE = {
    "init_from": "a composite starts each part from its own file: model.parts.<name>.init_from",
    "init_bands": "a composite starts each part from its own file: model.parts.<name>.init_bands",
}


def _resolve_composite(cfg: ModelConfig, raw: dict[str, Any], tokenizer_raw: Any, registry: Registry) -> ModelConfig:
    """``model.modality: composite``: validate ``model.parts`` (at least two, each a registered modality with its
    own tokenizer, masking, target and decoder) and refuse the single-modality keys, naming them."""
    if tokenizer_raw:
        raise ConfigError("config model.tokenizer: a composite model has one per part (model.parts.<name>.tokenizer)")
    defaults = ModelConfig()
    for key in _PER_PART:  # a saved config holds every key at its default
        if key in raw and raw[key] != getattr(defaults, key):
            raise ConfigError(f"config model.{key}: a composite model sets it per part (model.parts.<name>.{key})")
    for key, reason in _NOT_COMPOSITE.items():
        if raw.get(key) is not None:
            raise ConfigError(f"config model.{key}: {reason}")
    if len(cfg.parts) < 2:
        raise ConfigError(f"config model.parts: a composite model needs at least two parts, got {list(cfg.parts)}")
    parts = {}
    for name, part_raw in cfg.parts.items():
        where = f"model.parts.{name}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ConfigError(f"config {where}: a part name must be an identifier (letters, digits, _)")
        if isinstance(part_raw, PartConfig):  # already validated (a config resolved twice)
            part_raw = config_to_dict(part_raw)
        part_raw = dict(part_raw or {}) if isinstance(part_raw, dict) or part_raw is None else part_raw
        tokenizer = part_raw.pop("tokenizer", None) if isinstance(part_raw, dict) else None
        part = from_dict(PartConfig, part_raw, where)
        part.modality = part.modality or str(name)
        if part.modality == COMPOSITE:
            raise ConfigError(f"config {where}.modality: a part cannot itself be a composite")
        try:
            modality = registry.modality(part.modality)
            registry.target(part.target)
            decoder = registry.decoder(part.decoder)
            strategy = registry.masking_strategy(part.masking)
        except KeyError as exc:
            raise ConfigError(f"config {where}: {exc.args[0]}") from None
        check_options(decoder, part.decoder_options, f"{where}.decoder_options", "decoder", DECODER_ARGUMENTS)
        check_options(strategy, part.masking_options, f"{where}.masking_options", "masking strategy",
                       MASKING_ARGUMENTS)  # fmt: skip
        part.tokenizer = from_dict(modality.tokenizer_config, tokenizer, f"{where}.tokenizer")
        if cfg.joint_decoder:
            for key in ("decoder", "decoder_options", "pred_masked_only"):
                if getattr(part, key) != getattr(PartConfig(), key):
                    raise ConfigError(f"config {where}.{key}: the part has no decoder of its own with "
                                      "model.joint_decoder: true")  # fmt: skip
        parts[str(name)] = part
    cfg.parts = parts
    for pair in cfg.contrastive.pairs or []:
        unknown = [name for name in pair if name not in parts]
        if unknown:
            raise ConfigError(f"config model.contrastive.pairs: {pair} names {unknown}, not parts of this model "
                              f"({', '.join(parts)})")  # fmt: skip
    return cfg
