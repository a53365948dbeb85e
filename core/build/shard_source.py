"""A split read from shards (``data.shards``, ``data.heldout_shards``), a mix of sources (``data.sources``) or a
Hugging Face ``datasets`` table (``data.hf_dataset``), decoded by the modality's own dataset code
(:class:`~anymae.core.build.scratch.ScratchDecoder`); the front door :func:`split_dataset` reads the modality's
folder when the data section names none of these. :func:`segmentation_split` and :func:`detection_split` do the
same for ``anymae segment`` and ``anymae detect`` (a sample holds the image and its label map, or the image and
its COCO annotations).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from anymae.core.build.hf_source import hf_split, is_saved_dataset
from anymae.core.build.scratch import (
    DetectScratchDecoder,
    ScratchDecoder,
    SegmentScratchDecoder,
    coco_located,
    coco_sample,
)
from anymae.core.config.stream import StreamConfig, stream_config
from anymae.core.data.parquet import ParquetRows, parquet_classes, parquet_counts, parquet_files
from anymae.core.data.samples import BadSampleError, DataError
from anymae.core.data.shards import ShardSet, ShardSplit, ShardStream, read_samples, resolve_shards

__all__ = ["CocoShardSplit", "CocoShardStream", "detection_split", "log_sources", "segmentation_split",
           "split_dataset"]  # fmt: skip


def split_dataset(
    modality: Any,
    data: Any,
    tokenizer: Any,
    *,
    split: str,
    labelled: bool = False,
    augment: dict[str, Any] | None = None,
    crop_pct: float = 0.875,
    training: bool = False,
) -> Dataset | None:
    """Split ``split`` of ``data``: the modality's folder dataset, or, when the data section names a stream
    source for the split, that source decoded by the modality (:class:`ScratchDecoder`). ``labelled``: items
    ``(input, label)`` (:meth:`build_labelled_dataset` with ``augment`` / ``crop_pct``). ``training``: the
    training loop's split, read as a :class:`ShardStream` (shuffled, split over ranks and workers); otherwise a
    :class:`ShardSplit` read once in order."""
    stream = stream_config(data)
    source = stream.split_source(split) if stream is not None else None
    if source is None and stream is not None and stream.streams and not labelled:
        try:  # training from shards: the held-out folder is optional
            return modality.build_dataset(data, tokenizer, split=split)
        except DataError:
            return None
    if source is None:
        if labelled:
            return modality.build_labelled_dataset(data, tokenizer, split=split, augment=augment, crop_pct=crop_pct)
        return modality.build_dataset(data, tokenizer, split=split)
    assert stream is not None
    key = "data.shards" if split == "train" else "data.heldout_shards"
    hf_name = stream.hf_dataset if split == "train" else stream.hf_heldout
    if hf_name and not stream.hf_streaming:
        return hf_split(modality, data, tokenizer, stream, split=split, labelled=labelled, augment=augment,
                        crop_pct=crop_pct)  # fmt: skip
    shards, mix = _split_shards(stream, split, labelled=labelled)
    if labelled and not shards.classes:
        raise DataError(f"{key}: labelled data needs the class names: the shards' {shards.urls[0]} folder has no "
                        "manifest.json with 'classes' (anymae pack --split-by-class writes one)")  # fmt: skip
    decode = ScratchDecoder(modality, data, tokenizer, split=split, labelled=labelled, augment=augment,
                            crop_pct=crop_pct)  # fmt: skip
    if training:
        if split != "train":
            raise ValueError("only the training split is streamed")
        return ShardStream(shards, decode=decode, shuffle_buffer=stream.shuffle_buffer,
                           samples_per_epoch=stream.samples_per_epoch, mix=mix)  # fmt: skip
    return ShardSplit(shards, decode=decode)


def _split_shards(
    stream: StreamConfig, split: str, *, labelled: bool = False
) -> tuple[ShardSet, list[tuple[ShardSet, float]]]:
    """The shards ``split`` reads (tar shards, or a table's parquet files with ``data.hf_streaming``), and the
    weighted sources of a training mix (``data.sources``; else empty)."""
    if split != "train" or not stream.sources:
        hf_name = stream.hf_dataset if split == "train" else stream.hf_heldout
        if hf_name:
            return parquet_shards(stream, hf_name, key=f"data.{'hf_dataset' if split == 'train' else 'hf_heldout'}",
                                  labelled=labelled), []  # fmt: skip
        return resolve_shards(stream.split_source(split), key="data.shards" if split == "train" else
                              "data.heldout_shards"), []  # fmt: skip
    mix: list[tuple[ShardSet, float]] = []
    for i, entry in enumerate(stream.sources):
        if "hf_dataset" in entry:
            if not stream.hf_streaming:
                raise DataError(f"data.sources[{i}]: a mix reads shards; pack the dataset with `anymae pack` first, "
                                "or read its parquet files as shards with data.hf_streaming: true")  # fmt: skip
            shards = parquet_shards(stream, entry["hf_dataset"], key=f"data.sources[{i}].hf_dataset",
                                    labelled=labelled)  # fmt: skip
        else:
            shards = resolve_shards(entry["shards"], key=f"data.sources[{i}].shards")
        mix.append((shards, entry.get("weight", 1.0)))
    return _joined([s for s, _ in mix]), mix


def parquet_shards(stream: StreamConfig, name: str, *, key: str, labelled: bool) -> ShardSet:
    """``data.hf_streaming``: the parquet files ``name`` names (a file, a glob or a folder) as shards, one file
    each, with their row counts and, for labelled data, the label column's class names. A ``save_to_disk``
    folder (memory-mapped Arrow, read in place) and a hub name (downloaded) are refused, naming the key."""
    path = Path(name).expanduser()
    if is_saved_dataset(path):
        raise DataError(f"{key}: {name} is a `save_to_disk` folder, memory-mapped and read in place without "
                        "data.hf_streaming; hf_streaming reads parquet files")  # fmt: skip
    if not path.exists() and not any(c in name for c in "*?["):
        raise DataError(f"{key}: {name} does not exist: data.hf_streaming reads local parquet files (a hub dataset "
                        "is read by naming it without hf_streaming: downloaded to the datasets cache)")  # fmt: skip
    try:
        import pyarrow.parquet  # noqa: F401  (installed with `datasets`)
    except ImportError:
        raise DataError(f"{key}: data.hf_streaming needs pyarrow: pip install 'anymae[hf]'") from None
    rows = ParquetRows(stream.hf_input_column, stream.hf_label_column if labelled else None)
    files = parquet_files(name, key=key)
    counts = parquet_counts(files, key=key)
    return ShardSet(tuple(files), counts, parquet_classes(files, rows, key=key), key, rows)


def _dense_shards(data: Any, split: str, command: str) -> tuple[StreamConfig, ShardSet, list] | None:
    """The shards a segmentation or detection split reads (None: the modality's folder); ``datasets`` tables are
    refused, naming the key."""
    stream = stream_config(data)
    if stream is None or stream.split_source(split) is None:
        return None
    for key in ("hf_dataset", "hf_heldout"):
        if getattr(stream, key):
            raise DataError(f"data.{key}: anymae {command} reads folders or shards; pack the data with `anymae pack "
                            f"--task {command}`")  # fmt: skip
    shards, mix = _split_shards(stream, split)
    return stream, shards, mix


def _dense_set(
    stream: StreamConfig, shards: ShardSet, mix: list, decode: Callable[[dict[str, Any]], list[Any]], *, training: bool
) -> ShardStream | ShardSplit:
    if training:
        return ShardStream(shards, decode=decode, shuffle_buffer=stream.shuffle_buffer,
                           samples_per_epoch=stream.samples_per_epoch, mix=mix)  # fmt: skip
    return ShardSplit(shards, decode=decode, views=1)


def segmentation_split(modality: Any, data: Any, tokenizer: Any, *, split: str, train: bool) -> Dataset:
    """Split ``split`` of ``anymae segment``'s data: the modality's segmentation dataset over its folder, or the
    shards the data section names for the split (``train``: the training stream, shuffled and split over ranks
    and workers), each sample decoded by that same dataset code (:class:`SegmentScratchDecoder`)."""
    found = _dense_shards(data, split, "segment")
    if found is None:
        return modality.build_segmentation_dataset(data, tokenizer, split=split, train=train)
    decode = SegmentScratchDecoder(modality, data, tokenizer, split=split, train=train)
    return _dense_set(*found, decode, training=train)


class CocoShardStream(ShardStream):
    """A detection training split read from shards; ``instances``: the modality's checked COCO split of the first
    sample (its categories; what packing dropped or clipped was reported by ``anymae pack``)."""

    def __init__(self, shards: ShardSet, *, instances: Any, **stream: Any) -> None:
        super().__init__(shards, **stream)
        self.instances = instances


class CocoShardSplit(ShardSplit):
    """A held-out detection split read from shards; ``instances``: the modality's checked COCO split of every
    sample's annotations (the ground truth COCOeval scores against), read in one pass at the start; ``keys``: each
    sample as ``shard.tar#key``, in reading order."""

    def __init__(
        self, shards: ShardSet, *, decode: Callable[[dict[str, Any]], list[Any]], instances: Any, keys: list[str]
    ) -> None:
        super().__init__(shards, decode=decode, views=1)
        self.instances, self.keys = instances, keys

    def source(self, index: int) -> Path:
        """The sample item ``index`` is read from, as ``shard.tar#key``."""
        return Path(self.keys[index])


def detection_split(
    modality: Any, data: Any, tokenizer: Any, *, split: str, augment: dict[str, Any] | None, training: bool = False
) -> Dataset:
    """Split ``split`` of ``anymae detect``'s data: the modality's detection dataset over its folder, or the shards
    the data section names for the split, each sample decoded by that same dataset code
    (:class:`DetectScratchDecoder`); ``training``: the training stream."""
    found = _dense_shards(data, split, "detect")
    if found is None:
        return modality.build_detection_dataset(data, tokenizer, split=split, augment=augment)
    if split == "train" and data.train_subset is not None:
        raise DataError("data.train_subset keeps the first images of a COCO file; with data.shards, pack the subset")
    stream, shards, mix = found
    decode = DetectScratchDecoder(modality, data, tokenizer, split=split, augment=augment)
    instances, keys = _shard_instances(modality, data, tokenizer, shards, first_only=training)
    if training:
        return CocoShardStream(shards, instances=instances, decode=decode, shuffle_buffer=stream.shuffle_buffer,
                               samples_per_epoch=stream.samples_per_epoch, mix=mix)  # fmt: skip
    return CocoShardSplit(shards, decode=decode, instances=instances, keys=keys)


def _shard_instances(
    modality: Any, data: Any, tokenizer: Any, shards: ShardSet, *, first_only: bool
) -> tuple[Any, list[str]]:
    """The samples' COCO annotations merged into one COCO file and read by the modality's detection dataset (its
    checks, its report, its ground truth), over empty stand-ins for the images; and each sample's
    ``shard.tar#key`` in reading order. ``first_only``: the first readable sample (the categories)."""
    images, annotations, categories, keys = [], [], None, []
    for sample in read_samples(shards.urls):
        try:
            image, coco = coco_sample(sample)
        except BadSampleError as exc:
            keys.append(f"{sample.get('__url__')}#{sample.get('__key__')}")
            warnings.warn(f"{exc}: its objects are not in the ground truth", stacklevel=2)
            continue
        if categories is None:
            categories = coco.get("categories") or []
        elif coco.get("categories", categories) != categories:
            where = f"shard {sample.get('__url__')}, key {sample.get('__key__')}"
            raise DataError(f"{shards.key}: {where} has other categories than the first sample: every sample of a "
                            "split carries the same list")  # fmt: skip
        keys.append(f"{sample.get('__url__')}#{sample.get('__key__')}")
        entry = coco["images"][0]
        images.append({**entry, "file_name": f"{len(images)}.{image.rsplit('.', 1)[-1]}"})
        annotations += coco.get("annotations") or []
        if first_only:
            break
    if not images:
        raise DataError(f"{shards.key}: no sample holds an image and its COCO annotations ('json')")
    folder = Path(tempfile.mkdtemp(prefix="anymae-coco-"))
    try:
        (folder / "images").mkdir()
        for entry in images:
            (folder / "images" / entry["file_name"]).write_bytes(b"")
        merged = {"images": images, "annotations": annotations, "categories": categories}
        (folder / "annotations.json").write_text(json.dumps(merged))
        located = coco_located(data, folder)
        instances = modality.build_detection_dataset(located, tokenizer, split="heldout", augment=None).instances
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return instances, keys


def _joined(sets: list[ShardSet]) -> ShardSet:
    """Several sources' shards read one after the other (an evaluation pass over a mix)."""
    counts = None if any(s.counts is None for s in sets) else tuple(n for s in sets for n in s.counts or ())
    return ShardSet(tuple(u for s in sets for u in s.urls), counts, sets[0].classes, "data.sources")


def log_sources(data: Any, *, main: bool = True) -> None:
    """One line per split saying what it reads (shards, or the modality's folder)."""
    stream = stream_config(data)
    if not main or stream is None:
        return
    for split in ("train", "heldout"):
        source = stream.split_source(split)
        if source is not None:
            how = " (its parquet files as shards: data.hf_streaming)" if stream.hf_streaming and isinstance(
                source, str) and source in (stream.hf_dataset, stream.hf_heldout) else ""  # fmt: skip
            print(f"data: the {split} split reads {_short(source)}{how}", flush=True)


def _short(source: Any) -> str:
    text = source if isinstance(source, str) else ", ".join(map(str, source))
    return text if len(text) < 200 else text[:197] + "..."
