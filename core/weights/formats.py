"""The checkpoint-format kit: what every format a modality registers shares.

A format (``anymae_register_checkpoint_formats``) reads one foreign layout into an anymae model and, optionally,
writes a model back out in it (``anymae convert --to``). Each modality owns its formats, next to its
architecture (official MAE / timm / Hugging Face ViTMAE in the image plugin, VideoMAE in the video plugin,
AudioMAE in the audio plugin); the core keeps only what they all use:

- :class:`CheckpointFormat`: the declared interface (``detect``, ``load``; optionally ``load_classifier`` and
  ``export``), and :class:`Export`, what an export hands to ``anymae convert``;
- key handling: :func:`unwrap_state`, :func:`rename_keys`, :func:`count_blocks`, :func:`infer_heads`;
- :func:`read_hugging_face_folder` (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``);
- :func:`build_and_load` (an MAE from a ``model`` config section and converted weights, stored fixed position
  tables compared with the recomputed ones) and :func:`build_classifier_and_load`.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config
from anymae.core.io.checkpoint import CheckpointError, load_state_dict_checked, read_checkpoint, read_safetensors
from anymae.core.model.mae import MaskedAutoencoder
from anymae.plugins.manager import Registry

__all__ = [
    "FIXED_TABLE_TOLERANCE",
    "MAE_VIT_NAMES",
    "MAE_VIT_PREFIXES",
    "MAE_VIT_TABLES",
    "CheckpointFormat",
    "Export",
    "LoadOptions",
    "build_and_load",
    "build_classifier_and_load",
    "check_fixed_table",
    "count_blocks",
    "hugging_face_widths",
    "infer_heads",
    "ordered_formats",
    "read_hugging_face_folder",
    "rename_keys",
    "split_mae_vit_state",
    "unwrap_state",
]

FIXED_TABLE_TOLERANCE = 1e-4  # a stored table this close to the sin-cos one is the fixed table (float32 rounding)


@dataclass(frozen=True)
class LoadOptions:
    """What a caller of ``load_model`` asks of a format's ``load``: ``strict`` refuses missing or unexpected keys
    (naming them; otherwise they are skipped with a warning), ``num_heads`` is a hint the tensors do not show
    (``--num-heads``) and ``norm_pix_loss`` overrides the target the format assumes."""

    strict: bool = True
    num_heads: int | None = None
    norm_pix_loss: bool | None = None


@dataclass
class Export:
    """A model written in a format's layout, for ``anymae convert --to <target>``.

    ``state`` is the flat state dict to write and ``notes`` are lines about what the layout does not record.
    ``wrap`` puts it under ``{"model": state}`` in a ``.pt`` file (the official files' layout; a bare state dict
    otherwise). ``sidecar`` is JSON written next to the file as ``<stem>.<target>.json`` (e.g. timm's constructor).
    ``verify(path) -> float | None`` checks the written file (and may return a max abs difference to report);
    without it, ``convert`` reads the file back and requires exactly ``state``.
    """

    state: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)
    wrap: bool = True
    sidecar: dict[str, Any] | None = None
    verify: Callable[[Path], float | None] | None = None


class CheckpointFormat(ABC):
    """A foreign checkpoint layout that ``load_model`` (and so ``anymae visualize``, ``export``, ``convert`` and
    ``model.init_from``) opens, registered with ``anymae_register_checkpoint_formats``.

    Formats are asked in registration order after anymae's own files, the ``fallback`` ones last: a layout that
    other layouts extend (the official MAE / timm ViT state dict, which AudioMAE files also match) is a
    fallback, so the more specific reader wins. ``export_targets`` names the ``anymae convert --to`` layouts
    that :meth:`export` writes.
    """

    fallback: ClassVar[bool] = False
    export_targets: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def detect(self, path: Path, payload: Any) -> bool:
        """Whether the source is in this format: ``path`` the file or folder given, ``payload`` what a file
        holds (``torch.load(weights_only=True)``, or a ``.safetensors`` state dict), ``None`` for a folder."""

    @abstractmethod
    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        """The pre-trained MAE of the source, built with ``registry`` as :class:`LoadOptions` say."""

    def load_classifier(
        self, path: Path, payload: Any, *, num_heads: int | None, registry: Registry
    ) -> nn.Module | None:
        """The classifier the source holds (a fine-tuned or linearly probed model), or None: a format that
        reads no classifiers keeps this default."""
        return None

    def export(self, model: nn.Module, *, target: str, dest: Path, registry: Registry) -> Export | None:
        """``model`` in the layout ``target`` (one of :attr:`export_targets`), to be written to ``dest``, or None
        when the model is not of this format's kind (the next format is asked)."""
        return None


class _PlainFormat(CheckpointFormat):
    """A registered object with only the minimal contract, ``detect(path, payload)`` and
    ``load(path, payload, *, strict, registry)`` (not a :class:`CheckpointFormat` subclass)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def detect(self, path: Path, payload: Any) -> bool:
        return bool(self.obj.detect(path, payload))

    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        return self.obj.load(path, payload, strict=options.strict, registry=registry)


def ordered_formats(registry: Registry) -> Iterator[tuple[str, str, CheckpointFormat]]:
    """The registered formats as ``(name, plugin, format)``: registration order, fallbacks last."""
    entries = [
        (name, entry.plugin, entry.obj if isinstance(entry.obj, CheckpointFormat) else _PlainFormat(entry.obj))
        for name, entry in registry.checkpoint_formats.items()
    ]
    yield from (e for e in entries if not e[2].fallback)
    yield from (e for e in entries if e[2].fallback)


# --- keys ---------------------------------------------------------------------------------------------------
# The official MAE's ViT key names (timm's VisionTransformer layout plus the MAE decoder), which AudioMAE keeps:
# (official prefix, anymae prefix), exact names, and the stored fixed position tables (compared, not loaded).
MAE_VIT_PREFIXES = (
    ("patch_embed.proj.", "tokenizer.proj."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
)
MAE_VIT_NAMES = {"cls_token": "encoder.cls_token", "mask_token": "decoder.mask_token"}
MAE_VIT_TABLES = {"pos_embed": "encoder.pos_embed", "decoder_pos_embed": "decoder.pos_embed"}


def split_mae_vit_state(
    state: Mapping[str, Tensor], *, extra_prefixes: Sequence[tuple[str, str]] = ()
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A state dict in the official MAE's ViT key names -> (anymae keys, stored position tables keyed
    ``encoder.pos_embed`` / ``decoder.pos_embed``, to compare with the fixed ones). ``extra_prefixes`` rename
    more (a format's heads); other unknown keys keep their names and a strict load reports them."""
    converted, tables = {}, {}
    for key, value in state.items():
        if key in MAE_VIT_TABLES:
            tables[MAE_VIT_TABLES[key]] = value
        else:
            converted[rename_keys(key, (*MAE_VIT_PREFIXES, *extra_prefixes), MAE_VIT_NAMES)] = value
    return converted, tables


def unwrap_state(payload: Any, keys: Sequence[str] = ("model", "state_dict")) -> dict[str, Any] | None:
    """The state dict of a payload: the first of ``keys`` that holds a dict (trainer checkpoints keep the
    weights under ``model``, DeepSpeed under ``module``), else the payload itself; None for a non-dict."""
    if not isinstance(payload, dict):
        return None
    for key in keys:
        if isinstance(payload.get(key), dict):
            return payload[key]
    return payload


def rename_keys(key: str, prefixes: Sequence[tuple[str, str]], names: Mapping[str, str] | None = None) -> str:
    """``key`` renamed: an exact entry of ``names``, else the first ``(old, new)`` prefix it starts with; a key
    that matches nothing keeps its name (a strict load then reports it as unexpected)."""
    if names and key in names:
        return names[key]
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def count_blocks(state: Mapping[str, Any], pattern: str) -> int:
    r"""1 + the largest block index captured by ``pattern`` (e.g. ``r"blocks\.(\d+)\."``) among the keys."""
    ids = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(ids) + 1 if ids else 0


def infer_heads(width: int, table: Mapping[int, int], given: int | None, *, what: str = "") -> int:
    """The attention heads of a ``width``-wide stack: ``given`` (a user's hint), else the architecture table's
    entry; heads are not visible in the tensors, so anything else raises naming the width."""
    heads = given or table.get(width)
    if heads is None:
        part = f"{what} " if what else ""
        raise CheckpointError(
            f"cannot infer the number of {part}heads for width {width}; pass num_heads= (--num-heads)"
        )
    return heads


def read_hugging_face_folder(folder: Path, *, model_type: str | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Hugging Face model folder -> (``config.json``, weights from ``model.safetensors`` or
    ``pytorch_model.bin``). ``model_type`` must match the config's (a config without one is accepted)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} is a folder without config.json (expected a Hugging Face {model_type} folder)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") not in (None, model_type):
        raise CheckpointError(f"{config_file}: model_type {config.get('model_type')!r} is not {model_type!r}")
    if (folder / "model.safetensors").is_file():
        state, _ = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = read_checkpoint(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin")
    return config, state


def hugging_face_widths(config: Mapping[str, Any], *, decoder: bool) -> dict[str, Any]:
    """The ViT sizes of a Hugging Face ``config.json`` (ViTMAE and VideoMAE share the names; GELU only) as
    ``model`` config fields, the decoder's too when ``decoder``. LayerNorm eps defaults to Hugging Face's 1e-12."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not supported (MAE uses exact GELU)")
    dim = config["hidden_size"]
    fields = {
        "embed_dim": dim,
        "depth": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"],
        "mlp_ratio": config["intermediate_size"] / dim,
        "norm_eps": config.get("layer_norm_eps", 1e-12),
    }
    if decoder:
        dec = config["decoder_hidden_size"]
        fields.update(
            decoder_embed_dim=dec,
            decoder_depth=config["decoder_num_hidden_layers"],
            decoder_num_heads=config["decoder_num_attention_heads"],
            decoder_mlp_ratio=config["decoder_intermediate_size"] / dec,
        )
    return fields


# --- building -----------------------------------------------------------------------------------------------
def build_and_load(
    model_raw: dict[str, Any],
    state: dict[str, Tensor],
    tables: Mapping[str, Tensor] | None = None,
    *,
    source: str,
    strict: bool,
    registry: Registry,
) -> MaskedAutoencoder:
    """The MAE of a ``model`` config section with ``state`` loaded (strict key check naming what differs).

    A state without ``decoder.*`` keys gives an encoder-only model. ``tables`` are the position tables the file
    stores, keyed by the buffer they match (``encoder.pos_embed``, ``decoder.pos_embed``); anymae recomputes its
    fixed tables, so a stored one must equal them (a learned table is refused, naming the difference).
    """
    cfg = resolve_model_config(model_raw, registry)
    with_decoder = any(k.startswith("decoder.") or ".decoder." in k for k in state)  # a composite's parts.*.decoder
    model = build_model(cfg, registry=registry, with_decoder=with_decoder)
    for key, stored in (tables or {}).items():
        if with_decoder or not key.startswith("decoder."):
            check_fixed_table(key, stored, model.get_buffer(key), source=source)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def check_fixed_table(key: str, stored: Tensor, ours: Tensor, *, source: str) -> None:
    """Refuse a stored position table whose shape or values differ from the fixed sin-cos table ``ours``."""
    if tuple(stored.shape) != tuple(ours.shape):
        raise CheckpointError(f"{source}: {key} has shape {tuple(stored.shape)}, expected {tuple(ours.shape)}")
    diff = (stored.float() - ours).abs().max().item()
    if diff > FIXED_TABLE_TOLERANCE:
        raise CheckpointError(
            f"{source}: stored {key} differs from the fixed 2-D sin-cos table by {diff:.3g}; "
            "anymae's pre-training MAE uses fixed tables (a learned table is not supported here)"
        )


def build_classifier_and_load(
    config: dict[str, Any],
    state: dict[str, Tensor],
    stored_pos_embed: Tensor | None,
    *,
    source: str,
    registry: Registry,
) -> nn.Module:
    """A classifier from its config (``model`` + ``classifier`` sections) with ``state`` loaded strictly, in eval
    mode. ``stored_pos_embed`` (1, num_prefix + L, D) is the encoder's table when the file stores one: equal to
    the fixed sin-cos table it is dropped (anymae recomputes it); otherwise it is learned (official fine-tuning
    trains it) and kept as a parameter ``encoder.pos_embed``."""
    from anymae.core.build.classifier import classifier_from_config

    try:
        model = classifier_from_config(config, registry)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: its classifier config cannot be rebuilt: {exc}") from None
    learned = stored_pos_embed is not None and _use_stored_table(model.encoder, stored_pos_embed, source=source)
    if learned:
        state = {**state, "encoder.pos_embed": stored_pos_embed}
    load_state_dict_checked(model, state, source=source, strict=True)
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
