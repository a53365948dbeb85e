"""Frozen encoder features of files, for one's own downstream pipeline (``anymae embed``).

Every input file gives one feature row, or for data with a time axis (audio, video) one row per window of the
file (:meth:`Modality.load_windows`: by default windows of the model's own span, end to end). A row is the
unmasked encoder's CLS token after the final norm, or the mean of its patch tokens (``pool``), exactly
``model.encode`` pooled (:func:`anymae.core.evaluate.knn.pooled_features`).

The output is one safetensors file (no pickle, readable from any language):

* ``features`` (R, D) float32: one row per file or window;
* ``file_index`` (R,) int64: the input file of each row (an index into the ``files`` metadata list);
* ``start`` (R,) float64: the start of each row's window in seconds (0 for data without a time axis);
* metadata (strings): ``format`` = ``anymae-embeddings``, ``files`` (a JSON list of the input paths, in order),
  ``pool``, ``checkpoint``, ``modality``, ``window`` and ``hop`` (JSON numbers or null).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from anymae.core.data.samples import DataError
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.knn import Pool, default_pool, pooled_features
from anymae.core.model.mae import MaskedAutoencoder
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["EMBEDDINGS_FORMAT", "Embeddings", "embed_files", "expand_inputs", "read_embeddings", "save_embeddings"]

EMBEDDINGS_FORMAT = "anymae-embeddings"
LIST_SUFFIXES = (".txt", ".lst")  # an input with one of these suffixes is a list of paths, one a line


@dataclass
class Embeddings:
    """Feature rows with where each came from (see the module docstring for the file layout)."""

    features: Tensor  # (R, D) float32
    file_index: Tensor  # (R,) int64
    start: Tensor  # (R,) float64 seconds
    files: list[str]
    pool: str
    metadata: dict[str, Any]


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Command-line inputs -> files: a folder gives every file below it (sorted; hidden ones skipped), a ``.txt`` /
    ``.lst`` file the paths it lists (one a line, relative to the list's folder; blank and ``#`` lines skipped),
    anything else itself. A path that does not exist raises :class:`DataError` naming it."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise DataError(f"input folder {item} holds no files")
            files.extend(found)
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            lines = [line.strip() for line in item.read_text().splitlines()]
            listed = [item.parent / line for line in lines if line and not line.startswith("#")]
            missing = [p for p in listed if not p.is_file()]
            if missing:
                raise DataError(f"input list {item}: {missing[0]} does not exist")
            files.extend(listed)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    if not files:
        raise DataError("no input files")
    return files


@torch.no_grad()
def embed_files(
    model: MaskedAutoencoder,
    files: Sequence[str | Path],
    *,
    pool: Pool | None = None,
    window: float | None = None,
    hop: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    data: Any = None,
    registry: Registry | None = None,
    progress: bool = False,
) -> Embeddings:
    """Feature rows of ``files`` (every window of each, in file then time order) under ``model``'s encoder.

    ``data``: the modality's data config (input normalization, sample rate, ...); default: the data section the
    checkpoint carries (anymae runs), else the modality's defaults. ``window``/``hop`` in seconds, for data with
    a time axis (see :meth:`~anymae.core.model.modality.Modality.load_windows`)."""
    registry = resolve_registry(registry)
    from anymae.core.config import from_dict, resolve_model_config

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model_cfg = resolve_model_config(model.config["model"], registry)
    modality = registry.modality(model_cfg.modality)
    if data is None:
        data = from_dict(modality.data_config, model.config.get("data") or {}, "data")
    pool = pool or default_pool(model)
    device = resolve_device(device) if isinstance(device, str) else device
    was_training = model.training
    model.to(device).eval()
    rows, owners, starts = [], [], []

    def run(batch: list[Tensor]) -> None:
        rows.append(pooled_features(model, torch.stack(batch).to(device), pool=pool).float().cpu())  # (B, D)

    def windows() -> Iterator[tuple[int, float, Tensor]]:
        bar = tqdm(files, desc="embed", disable=not progress, dynamic_ncols=True, leave=False)
        for index, path in enumerate(bar):
            for start, x in modality.load_windows(Path(path), data, model_cfg.tokenizer, window=window, hop=hop):
                yield index, start, x

    try:
        batch: list[Tensor] = []
        for index, start, x in windows():
            owners.append(index)
            starts.append(start)
            batch.append(x)
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        model.train(was_training)
    metadata = {"modality": model_cfg.modality, "window": window, "hop": hop}
    return Embeddings(
        features=torch.cat(rows),
        file_index=torch.tensor(owners, dtype=torch.int64),
        start=torch.tensor(starts, dtype=torch.float64),
        files=[str(p) for p in files],
        pool=pool,
        metadata=metadata,
    )


def save_embeddings(embeddings: Embeddings, path: str | Path, *, checkpoint: str | None = None) -> Path:
    """Write ``embeddings`` as a safetensors file (layout in the module docstring); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataError(f"-o {path}: the output is a .safetensors file")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {**embeddings.metadata, **({"checkpoint": checkpoint} if checkpoint else {})}
    metadata = {
        "format": EMBEDDINGS_FORMAT,
        "files": json.dumps(embeddings.files),
        "pool": embeddings.pool,
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in extra.items()},
    }
    tensors = {
        "features": embeddings.features.contiguous(),
        "file_index": embeddings.file_index.contiguous(),
        "start": embeddings.start.contiguous(),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_embeddings(path: str | Path) -> Embeddings:
    """Read a file written by :func:`save_embeddings` (``anymae embed``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        if metadata.get("format") != EMBEDDINGS_FORMAT:
            raise DataError(f"{path} is not an anymae embeddings file (metadata format={EMBEDDINGS_FORMAT!r})")
        tensors = {key: f.get_tensor(key) for key in ("features", "file_index", "start")}
    files = json.loads(metadata.pop("files"))
    pool = metadata.pop("pool")
    metadata.pop("format")
    return Embeddings(files=files, pool=pool, metadata=metadata, **tensors)
