"""``model.init_from``: pre-training that starts from a checkpoint's weights.

Any file or folder :func:`anymae.core.weights.loading.load_model` reads (anymae runs and exports, official MAE ``.pth``,
Hugging Face ViTMAE folders, VideoMAE, AudioMAE, plugin formats) is loaded as the model it describes, then its
weights go into the model the config builds, through :func:`anymae.core.build.adapt.transfer_weights` (new channel
count, input size or patch size). The optimizer, the schedule and the epoch count start fresh; a file without a
decoder leaves the config's decoder at the official initialisation. The config is the architecture: what the
file cannot hold differently (widths, depths, MLP ratios, qkv bias, CLS token) must agree, and what only some
formats record (heads, LayerNorm eps, decoder kind) must agree with an anymae checkpoint, which records all of
it; for other formats the config's value is used and the difference is noted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anymae.core.build.adapt import InitReport, transfer_weights
from anymae.core.config import ConfigError, ModelConfig, config_to_dict
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
    if cfg.init_from is None:
        return None
    path = resolve_source(cfg.init_from).expanduser()  # a hub name: its snapshot in the Hugging Face cache
    if not path.exists():
        raise ConfigError(f"model.init_from={cfg.init_from!r}: no such file or folder")
    payload = None if path.is_dir() else read_payload(path)
    # The config's heads are the hint for formats whose tensors do not show them (anymae files record theirs).
    # Building the file's model draws initial weights: the run's random stream (masks, drop path) must not move.
    with torch.random.fork_rng(devices=[]):
        source = model_from_payload(
            path, payload, norm_pix_loss=None, num_heads=cfg.num_heads, strict=True, registry=registry
        )
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


def _tokenizer_changes(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    return [
        f"model.tokenizer.{k}: {theirs.get(k)!r} in the file, {ours.get(k)!r} here"
        for k in sorted(set(theirs) | set(ours))
        if theirs.get(k) != ours.get(k)
    ]


def _print(report: InitReport) -> None:
    print(f"init_from {report.source}:", flush=True)
    for line in report.lines():
        print(f"  {line}", flush=True)
