"""The front door: a config source and overrides -> a validated pre-training or classifier config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anymae.core.config.classify import ClassifyConfig, FinetuneConfig, LinprobeConfig
from anymae.core.config.detect import DetectConfig, load_detect_config
from anymae.core.config.errors import ConfigError
from anymae.core.config.refuse import refuse_unsupported
from anymae.core.config.resolve import resolve_config, resolve_model_config, resolve_part_data
from anymae.core.config.schema import Config
from anymae.core.config.segment import SegmentConfig, load_segment_config
from anymae.core.config.sources import apply_preset, read_config_source
from anymae.core.config.stream import data_section
from anymae.core.config.validate import from_dict
from anymae.plugins.manager import COMPOSITE, Registry, resolve_registry

__all__ = ["CLASSIFY_SECTIONS", "load_classify_config", "load_config", "load_pretrain_config"]

CLASSIFY_SECTIONS = ("finetune", "linprobe")


def load_config(
    source: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> Config | ClassifyConfig | DetectConfig | SegmentConfig:
    """Read a YAML file or bundled config, apply overrides and validate everything. A config with a
    ``finetune`` or ``linprobe`` section is a :class:`ClassifyConfig` (see :func:`load_classify_config`), one with
    a ``detect`` section a :class:`DetectConfig` (:func:`load_detect_config`), one with a ``segment`` section a
    :class:`SegmentConfig` (:func:`load_segment_config`)."""
    _, raw = read_config_source(source)
    if "segment" in raw:
        return load_segment_config(source, overrides, registry=registry)
    if "detect" in raw:
        return load_detect_config(source, overrides, registry=registry)
    if any(s in raw for s in CLASSIFY_SECTIONS):
        return load_classify_config(source, overrides, registry=registry)
    return resolve_config(apply_preset(raw, overrides), registry)


def load_pretrain_config(source: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None) -> Config:
    """A pre-training config, as :func:`load_config` reads it; a fine-tuning or linear-probing config is refused,
    naming the command that runs it."""
    cfg = load_config(source, overrides, registry)
    if isinstance(cfg, ClassifyConfig):
        raise ConfigError(f"config {source} is a {cfg.mode} config: run `anymae {cfg.mode} {source}`")
    if isinstance(cfg, DetectConfig | SegmentConfig):
        command = "detect" if isinstance(cfg, DetectConfig) else "segment"
        raise ConfigError(f"config {source} is a {command} config: run `anymae {command} {source}`")
    return cfg


def load_classify_config(
    source: str | Path, overrides: Sequence[str] = (), *, mode: str | None = None, registry: Registry | None = None
) -> ClassifyConfig:
    """Read a fine-tuning / linear-probing config: it has a ``finetune`` or a ``linprobe`` section (``mode``,
    when given, says which one it must be). Presets and overrides as in :func:`apply_preset`; ``data`` is
    validated against the data_config of ``<section>.modality``."""
    registry = resolve_registry(registry)
    _, raw = read_config_source(source)
    raw = apply_preset(raw, overrides)
    found = [s for s in CLASSIFY_SECTIONS if s in raw]
    if len(found) != 1 or (mode is not None and found != [mode]):
        want = f"a {mode!r} section" if mode else "one of the sections 'finetune' or 'linprobe'"
        raise ConfigError(f"config {source}: needs {want}; it has {found or 'neither'}")
    mode = found[0]
    data_raw = raw.pop("data", None)
    if isinstance(raw[mode], dict) and "eval_every_epochs" in raw[mode]:
        raise ConfigError(f"config {mode}.eval_every_epochs is now train.eval_every_epochs (one key for every command)")
    head = from_dict(FinetuneConfig if mode == "finetune" else LinprobeConfig, raw.pop(mode), mode)
    cfg = from_dict(ClassifyConfig, raw, "")
    setattr(cfg, mode, head)
    if not head.checkpoint:
        raise ConfigError(f"config {mode}.checkpoint is required: the pre-trained checkpoint to start from")
    refuse_unsupported(cfg, mode)
    if head.modality == COMPOSITE:  # the parts, and so the data sections, are the checkpoint's
        cfg.data = _composite_classify_data(cfg, mode, data_raw, registry)
        return cfg
    if head.parts is not None:
        raise ConfigError(f"config {mode}.parts is for {mode}.modality: {COMPOSITE}; this is {head.modality!r}")
    try:
        modality = registry.modality(head.modality)
    except KeyError as exc:
        raise ConfigError(f"config {mode}.modality: {exc.args[0]}") from None
    cfg.data = data_section(modality.data_config, data_raw, "data")
    if isinstance(head, FinetuneConfig) and head.token_masking:
        try:
            registry.masking_strategy(head.token_masking)
        except KeyError as exc:
            raise ConfigError(f"config {mode}.token_masking: {exc.args[0]}") from None
    return cfg


def _composite_classify_data(cfg: ClassifyConfig, mode: str, data_raw: Any, registry: Registry) -> dict[str, Any]:
    """A classifier over a composite checkpoint's parts: ``data.<part>`` for each of ``<mode>.parts`` (default:
    all), validated against the parts the checkpoint declares; what a composite input cannot take is refused."""
    from anymae.core.io.checkpoint import read_payload
    from anymae.core.io.hub import resolve_source

    head = cfg.head
    payload = read_payload(resolve_source(head.checkpoint))
    model_raw = payload.get("config", {}).get("model", {}) if isinstance(payload, dict) else {}
    if model_raw.get("modality") != COMPOSITE:
        raise ConfigError(f"config {mode}.modality: {COMPOSITE}, but {head.checkpoint} is not a composite model")
    model = resolve_model_config(model_raw, registry)
    names = list(head.parts or model.parts)
    unknown = [name for name in names if name not in model.parts]
    if unknown:
        raise ConfigError(
            f"config {mode}.parts: {unknown} are not parts of {head.checkpoint} ({', '.join(model.parts)})"
        )
    refused = {"tokenizer": bool(head.tokenizer), "init_bands": head.init_bands is not None}
    if isinstance(head, FinetuneConfig):
        refused.update(mixup=head.mixup > 0, cutmix=head.cutmix > 0, token_masking=head.token_masking is not None)
    for key, bad in refused.items():
        if bad:
            raise ConfigError(f"config {mode}.{key}: not supported for composite models yet")
    model.parts = {name: model.parts[name] for name in names}
    return resolve_part_data(model, data_raw, registry)
