"""Frozen encoder features of files, for one's own downstream pipeline (``anymae embed``).

Every input file gives one feature row, or for data with a time axis (audio, video) one row per window of the
file (:meth:`Modality.load_windows`: by default windows of the model's own span, end to end). A row is the
unmasked encoder's CLS token after the final norm, or the mean of its patch tokens (``pool``), exactly
``model.encode`` pooled (:func:`anymae.core.evaluate.knn.pooled_features`).

The output is one safetensors file (no pickle, readable from any language):

* ``features`` (R, D) float32: one row per file or window;
* ``file_index`` (R,) int64: the input file of each row (an index into the ``files`` metadata list);
* ``start`` (R,) float64: the start of each row's window in seconds (0 for data without a time axis);
* with ``--tokens``: ``layer_<i>`` (R, L, D) float32 for each block ``i`` of ``--layers`` (default: the last), the
  block's patch tokens before the final norm, no CLS, row-major over the token grid
  (:func:`anymae.core.model.features.block_features`, what dense heads read); metadata ``layers`` and ``grid``;
* metadata (strings): ``format`` = ``anymae-embeddings``, ``files`` (a JSON list of the input paths, in order),
  ``skipped`` (a JSON list of the input files that could not be read, left out of ``files``),
  ``pool``, ``checkpoint``, ``modality``, ``window`` and ``hop`` (JSON numbers or null).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from anymae.core.build.data_source import modality_for
from anymae.core.config import COMPOSITE, ConfigError, resolve_model_config
from anymae.core.config.stream import data_section
from anymae.core.data.samples import DataError, SafeDataset
from anymae.core.data.shards import extract_samples, is_shard_input
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.knn import Pool, default_pool, pooled_features
from anymae.core.model.features import block_features
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = [
    "EMBEDDINGS_FORMAT",
    "Embeddings",
    "embed_command",
    "embed_files",
    "expand_inputs",
    "read_embeddings",
    "save_embeddings",
]

EMBEDDINGS_FORMAT = "anymae-embeddings"
T = TypeVar("T")
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
    skipped: list[str] = field(default_factory=list)  # input files that could not be read
    layers: dict[int, Tensor] = field(default_factory=dict)  # --tokens: block i -> (R, L, D) patch tokens


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Command-line inputs -> files: a folder gives every file below it (sorted; hidden ones skipped), a ``.txt`` /
    ``.lst`` file the paths it lists (one a line, relative to the list's folder; blank and ``#`` lines skipped),
    a shard ``x.tar`` its samples' media, ``x.tar#key`` that sample's (written to a temporary folder, named by key),
    anything else itself. A path that does not exist raises :class:`DataError` naming it."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if is_shard_input(item):
            files.extend(extract_samples(item, _scratch()))
        elif item.is_dir():
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


def _scratch() -> Path:
    """A temporary folder for the samples of shard inputs, removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="anymae-inputs-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


class _FileWindows(Dataset):
    """Item i: ``(windows,)``, every ``(start, x)`` window of file i (in a tuple: :class:`SafeDataset` keeps the first
    value of a tuple item). A :class:`DataError` (the run's settings, e.g. ``--window`` for images) is handed back as
    the item instead of being raised, so that :class:`SafeDataset` does not take it for an unreadable file."""

    def __init__(self, files: Sequence[str | Path], read: Callable[[Path], Iterable[tuple[float, Tensor]]]) -> None:
        self.files = list(files)
        self.read = read

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[list[tuple[float, Tensor]] | DataError]:
        try:
            return (list(self.read(Path(self.files[index]))),)
        except DataError as exc:
            return (exc,)


def _file_windows(safe: SafeDataset, progress: bool) -> Iterator[tuple[int, float, Tensor]]:
    """``(file index, start, x)`` of every window of every readable file; an unreadable file is skipped (one
    warning naming it, counted in ``safe.bad``)."""
    for index in tqdm(range(len(safe)), desc="embed", disable=not progress, dynamic_ncols=True, leave=False):
        item = safe[index]
        if isinstance(item["input"], DataError):
            raise item["input"]
        if item["bad"]:  # file `index` is unreadable and the next readable one stood in: it comes in its own turn
            continue
        for start, x in item["input"]:
            yield index, start, x


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
    layers: Sequence[int] | None = None,
) -> Embeddings:
    """Feature rows of ``files`` (every window of each, in file then time order) under ``model``'s encoder.

    ``layers``: also every patch token of these blocks (from 0; -1 the last), before the final norm (``anymae embed
    --tokens --layers``); the inputs must all make the same token grid (the evaluation transform of fixed-size data
    does).

    ``data``: the modality's data config (input normalization, sample rate, ...); default: the data section the
    checkpoint carries (anymae runs), else the modality's defaults. ``window``/``hop`` in seconds, for data with
    a time axis (see :meth:`~anymae.core.model.modality.Modality.load_windows`). A file that cannot be read is
    skipped with a warning naming it (:class:`SafeDataset`), left out of ``files`` and listed in ``skipped``."""
    registry = resolve_registry(registry)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model_cfg = resolve_model_config(model.config["model"], registry)
    if model_cfg.modality == COMPOSITE:
        raise ConfigError("anymae embed reads files of one modality; a composite model's parts are matched with "
                          "`anymae retrieve` and scored with `anymae knn --parts PART`")  # fmt: skip
    modality = modality_for(model_cfg, registry=registry)
    if data is None:
        data = data_section(modality.data_config, model.config.get("data") or {}, "data")
    pool = pool or default_pool(model)
    depth = len(model.encoder.blocks)
    layers = [i + depth if i < 0 else i for i in layers] if layers else None  # -1: the last block
    device = resolve_device(device) if isinstance(device, str) else device
    safe = SafeDataset(_FileWindows(files, partial(modality.load_windows, data=data, tokenizer=model_cfg.tokenizer,
                                                   window=window, hop=hop)), stand_in=False)  # fmt: skip
    was_training = model.training
    model.to(device).eval()
    try:
        rows, tokens, owners, starts = _encode_windows(
            model, safe, pool=pool, layers=layers, batch_size=batch_size, device=device, progress=progress
        )
    finally:
        model.train(was_training)
    kept = [i for i in range(len(files)) if i not in safe.bad]
    renumber = {old: new for new, old in enumerate(kept)}  # file_index into the kept files
    return Embeddings(
        features=torch.cat(rows),
        file_index=torch.tensor([renumber[i] for i in owners], dtype=torch.int64),
        start=torch.tensor(starts, dtype=torch.float64),
        files=[str(files[i]) for i in kept],
        pool=pool,
        metadata={
            "modality": model_cfg.modality,
            "window": window,
            "hop": hop,
            **({"layers": list(layers), "grid": list(model.tokenizer.grid)} if layers else {}),
        },
        skipped=[str(files[i]) for i in sorted(safe.bad)],
        layers={i: torch.cat(found) for i, found in tokens.items()},
    )


def _encode_windows(
    model: MaskedAutoencoder,
    safe: SafeDataset,
    *,
    pool: Pool,
    layers: list[int] | None,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> tuple[list[Tensor], dict[int, list[Tensor]], list[int], list[float]]:
    """Every readable window through the encoder, in batches -> (pooled rows, patch tokens of ``layers``, the file
    index and start second of each row)."""  # fmt: skip
    rows, owners, starts = [], [], []
    tokens: dict[int, list[Tensor]] = {i: [] for i in layers or ()}
    for chunk in _batches(_file_windows(safe, progress), batch_size):
        x = torch.stack([x for _, _, x in chunk]).to(device)
        rows.append(pooled_features(model, x, pool=pool).float().cpu())  # (B, D)
        if layers:
            grid = tuple(model.tokenizer.grid)
            maps = block_features(model.encoder, model.tokenizer(x), layers, grid=grid)  # each (B, D, H', W')
            for i, found in zip(layers, maps, strict=True):
                tokens[i].append(found.flatten(2).transpose(1, 2).float().cpu())  # (B, L, D)
        owners.extend(index for index, _, _ in chunk)
        starts.extend(start for _, start, _ in chunk)
    return rows, tokens, owners, starts


def embed_command(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    pool: Pool | None = None,
    window: float | None = None,
    hop: float | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = False,
    layers: Sequence[int] | None = None,
) -> tuple[Embeddings, Path]:
    """``anymae embed``: the feature rows of ``inputs`` (files, folders, lists: :func:`expand_inputs`) under the
    encoder of ``checkpoint`` (anything :func:`load_model` reads), written to ``output`` -> (rows, path)."""
    result = embed_files(load_model(checkpoint), expand_inputs(inputs), pool=pool, window=window, hop=hop,
                         batch_size=batch_size, device=device, progress=progress, layers=layers)  # fmt: skip
    return result, save_embeddings(result, output, checkpoint=str(checkpoint))


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
        "skipped": json.dumps(embeddings.skipped),
        "pool": embeddings.pool,
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in extra.items()},
    }
    tensors = {
        "features": embeddings.features.contiguous(),
        "file_index": embeddings.file_index.contiguous(),
        "start": embeddings.start.contiguous(),
        **{f"layer_{i}": found.contiguous() for i, found in embeddings.layers.items()},
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
        names = [key for key in f.keys() if key.startswith("layer_")]  # noqa: SIM118 (safe_open is not a mapping)
        layers = {int(key.removeprefix("layer_")): f.get_tensor(key) for key in names}
    files = json.loads(metadata.pop("files"))
    skipped = json.loads(metadata.pop("skipped", "[]"))
    pool = metadata.pop("pool")
    metadata.pop("format")
    return Embeddings(files=files, pool=pool, metadata=metadata, skipped=skipped, layers=dict(sorted(layers.items())),
                      **tensors)  # fmt: skip
