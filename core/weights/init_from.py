"""``model.init_from``: pre-training that starts from a checkpoint's weights.

Any file or folder :func:`anymae.core.weights.loading.load_model` reads (anymae runs and exports, official MAE ``.pth``,
Hugging Face ViTMAE folders, VideoMAE, AudioMAE, plugin formats) is loaded as the model it describes, then its
weights go into the model the config builds, through :func:`anymae.core.build.adapt.transfer_weights` (new channel
count, input size or patch size). The optimizer, the schedule and the epoch count start fresh; a file without a
decoder leaves the config's decoder at the official initialisation. The config is the architecture: what the
file cannot hold differently (widths, depths, MLP ratios, qkv bias, CLS token) must agree, and what only some
formats record (heads, LayerNorm eps, decoder kind) must agree with an anymae checkpoint, which records all of
it; for other formats the config's value is used and the difference is noted.

A composite starts each part from its own single-modality file (``model.parts.<name>.init_from``, e.g. an image MAE
for the video part and an AudioMAE for the audio part): the file's tokenizer goes into the part's, its first
``model.part_depth`` blocks into the part's own blocks, the rest of its encoder into the shared encoder (taken from
the first part that names a file: later parts' files give their tokenizer and own blocks only) and its decoder into
the part's own; the modality embeddings, a joint decoder and the shared layers no file gives start fresh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anymae.core.build.adapt import InitReport, transfer_weights
from anymae.core.config import COMPOSITE, ConfigError, ModelConfig, config_to_dict
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.io.hub import resolve_source
from anymae.core.weights.loading import CHECKPOINT_FORMAT, model_from_payload, read_payload
from anymae.plugins.manager import Registry

__all__ = ["init_model_from"]

# Fields the tensors show (a difference is also a shape or key mismatch, named here in config terms).
VISIBLE = ("modality", "embed_dim", "depth", "mlp_ratio", "qkv_bias", "cls_token")
VISIBLE_DECODER = ("decoder_embed_dim", "decoder_depth", "decoder_mlp_ratio")
# Fields the tensors do not show: recorded by anymae checkpoints (and some by Hugging Face configs), assumed by
# the official and VideoMAE / AudioMAE importers.
HIDDEN = ("num_heads", "norm_eps")
HIDDEN_DECODER = ("decoder", "decoder_options", "decoder_num_heads")


def init_model_from(
    model: nn.Module, cfg: ModelConfig, *, registry: Registry | None = None, log: bool = True
) -> dict | None:
    """Load ``cfg.init_from`` into ``model`` (built from ``cfg``), adapting channels (``cfg.init_bands``), input
    size and patch size; print what was loaded, adapted and new when ``log``. Returns the report as plain data
    (saved in the run's checkpoints), or None when ``cfg.init_from`` is unset.

    Raises :class:`ConfigError` for a missing file and :class:`CheckpointError` naming every field, key and shape
    that no adaptation covers, before any weight is written."""
    if cfg.modality == COMPOSITE:
        return _init_composite_from(model, cfg, registry=registry, log=log)
    if cfg.init_from is None:
        return None
    path, payload, source = _read_source(cfg.init_from, cfg.num_heads, "model.init_from", registry)
    records_all = isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT
    theirs = source.config["model"]
    ours = config_to_dict(cfg)
    has_decoder = source.decoder is not None
    strict = VISIBLE + (VISIBLE_DECODER if has_decoder else ())
    hidden = HIDDEN + (HIDDEN_DECODER if has_decoder else ())
    if records_all:
        strict, hidden = strict + hidden, ()
    wrong = [f"model.{k}: the file's model has {theirs[k]!r}, the config {ours[k]!r}" for k in strict
             if theirs[k] != ours[k]]  # fmt: skip
    if wrong:
        raise CheckpointError(
            f"model.init_from={cfg.init_from}: the file's model differs from the config's in what no adaptation "
            f"covers: {'; '.join(wrong)} (set these in the config to start from this file)"
        )
    report = transfer_weights(source, model, source_name=str(path), bands=cfg.init_bands)
    report.notes += [
        f"model.{k}: the config's {ours[k]!r} is used (the file's format gives {theirs[k]!r})"
        for k in hidden
        if theirs[k] != ours[k]
    ]
    report.notes += _tokenizer_changes(theirs.get("tokenizer") or {}, ours.get("tokenizer") or {})
    if log:
        _print(report)
    return report.as_dict()


def _read_source(name: str, num_heads: int, key: str, registry: Registry | None) -> tuple[Any, Any, nn.Module]:
    """``name`` (a file, folder or hub name) -> (its path, its payload, the MAE it holds)."""
    path = resolve_source(name).expanduser()  # a hub name: its snapshot in the Hugging Face cache
    if not path.exists():
        raise ConfigError(f"{key}={name!r}: no such file or folder")
    payload = None if path.is_dir() else read_payload(path)
    # The config's heads are the hint for formats whose tensors do not show them (anymae files record theirs).
    # Building the file's model draws initial weights: the run's random stream (masks, drop path) must not move.
    with torch.random.fork_rng(devices=[]):
        source = model_from_payload(path, payload, norm_pix_loss=None, num_heads=num_heads, strict=True,
                                    registry=registry)  # fmt: skip
    return path, payload, source


def _init_composite_from(model: nn.Module, cfg: ModelConfig, *, registry: Registry | None, log: bool) -> dict | None:
    """Each part with ``init_from``: its file's weights into the part (and, for the first such part, the shared
    encoder). A refused file leaves the model as it was."""
    named = {name: part for name, part in cfg.parts.items() if part.init_from is not None}
    if not named:
        return None
    plans = []
    shared = True  # the first part that names a file gives the shared encoder
    for name, part in named.items():
        key = f"model.parts.{name}.init_from"
        path, _, source = _read_source(part.init_from, cfg.num_heads, key, registry)  # type: ignore[arg-type]
        theirs = source.config["model"]
        if theirs["modality"] != part.modality or theirs["embed_dim"] != cfg.embed_dim:
            raise CheckpointError(
                f"{key}={part.init_from}: the file holds a {theirs['modality']} model {theirs['embed_dim']} wide; the "
                f"part is {part.modality}, {cfg.embed_dim} wide (model.embed_dim)"
            )
        depth = len(source.encoder.blocks)
        drop = ("decoder.",) if cfg.joint_decoder else ()
        if not shared:  # the shared encoder came from an earlier part's file
            drop += (
                *(f"encoder.blocks.{i}." for i in range(cfg.part_depth, depth)),
                "encoder.norm.",
                "encoder.cls_token",
            )
        plans.append((name, path, source, _PartView(model, name, shared=shared), drop))
        shared = False
    reports = {}
    before = {k: v.clone() for k, v in model.state_dict().items()}  # put back if a later part's file is refused
    for name, path, source, view, drop in plans:
        try:
            report = transfer_weights(source, view, source_name=str(path), bands=cfg.parts[name].init_bands,
                                      drop=drop)  # fmt: skip
        except CheckpointError as exc:
            model.load_state_dict(before)
            raise CheckpointError(f"model.parts.{name}.init_from: {exc}") from None
        if "decoder." in drop:
            report.notes.append("the file's decoder is not used: model.joint_decoder decodes every part")
        if view is not plans[0][3]:
            report.notes.append(f"the shared encoder comes from {plans[0][0]}'s file; this file's is not used")
        if log:
            _print(report, part=name)
        reports[name] = report.as_dict()
    return {"parts": reports}


class _PartView(nn.Module):
    """A composite's part under a single-modality MAE's key names: ``tokenizer``, ``encoder.blocks`` (the part's
    own, then, with ``shared``, the shared encoder's), ``encoder.norm`` / ``encoder.cls_token`` (with ``shared``)
    and ``decoder`` (the part's own, if any). It holds the composite's modules: loading it loads them."""

    def __init__(self, model: nn.Module, name: str, *, shared: bool) -> None:
        super().__init__()
        part = model.parts[name]
        self.tokenizer = part.tokenizer
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList([*part.blocks, *(model.encoder.blocks if shared else [])])
        if shared:
            self.encoder.norm = model.encoder.norm
            if model.encoder.cls_token is not None:
                self.encoder.cls_token = model.encoder.cls_token
        if part.decoder is not None:
            self.decoder = part.decoder


def _tokenizer_changes(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    return [
        f"model.tokenizer.{k}: {theirs.get(k)!r} in the file, {ours.get(k)!r} here"
        for k in sorted(set(theirs) | set(ours))
        if theirs.get(k) != ours.get(k)
    ]


def _print(report: InitReport, *, part: str | None = None) -> None:
    print(f"{'init_from' if part is None else f'parts.{part}.init_from'} {report.source}:", flush=True)
    for line in report.lines():
        print(f"  {line}", flush=True)
