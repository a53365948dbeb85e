"""Checkpoint files: atomic writes, safe reads, safetensors export.

Every write goes to a temporary file in the same folder, is flushed to disk and then renamed over the
target, so a crash never leaves a half-written checkpoint under the final name. Every read uses
``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_FORMAT",
    "CLASSIFIER_FORMAT",
    "CheckpointError",
    "check_state_dict",
    "export_safetensors",
    "load_state_dict_checked",
    "read_checkpoint",
    "read_payload",
    "read_safetensors",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "anymae"  # the "format" entry of a pre-trained MAE checkpoint
CLASSIFIER_FORMAT = "anymae-classifier"  # ... and of a fine-tuned / probed classifier
SAFETENSORS_CONFIG_KEY = "anymae_config"  # metadata entry holding the model config as JSON


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, is unsafe, or does not match the model."""


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``payload`` with ``torch.save`` (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file.

    ``argparse.Namespace`` (the ``args`` entry of official MAE trainer checkpoints) is allowed: it is
    plain data. Anything else that is not tensors and containers is refused.

    Zip-format files (every ``torch.save`` since torch 1.6) are memory-mapped: tensors are read from the page
    cache on use, so the processes of a node that resume from one file share its pages instead of each
    holding a copy (a ViT-H training checkpoint is ~8 GB).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it is not plain tensors and containers and could run code when "
            f"unpickled (torch.load weights_only=True said: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def export_safetensors(model: torch.nn.Module, path: str | Path, *, config: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights as safetensors (a format that cannot carry code), atomically, with its
    config (``config``, default the anymae model's ``model.config``: the plain data needed to rebuild it) as JSON
    in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = model.config if config is None else config  # every anymae model declares its config
    metadata = {"format": "anymae", SAFETENSORS_CONFIG_KEY: json.dumps(config)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``.safetensors`` file -> (tensors, the anymae config from its metadata, or {} for other files)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None
    config = json.loads(metadata[SAFETENSORS_CONFIG_KEY]) if SAFETENSORS_CONFIG_KEY in metadata else {}
    return tensors, config


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
