"""A split read from shards (``data.shards``, ``data.heldout_shards``), a mix of sources (``data.sources``) or a
Hugging Face ``datasets`` table (``data.hf_dataset``), decoded by the modality's own dataset code
(:class:`~anymae.core.build.scratch.ScratchDecoder`); the front door :func:`split_dataset` reads the modality's
folder when the data section names none of these.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from anymae.core.build.hf_source import hf_split
from anymae.core.build.scratch import ScratchDecoder
from anymae.core.config.stream import stream_config
from anymae.core.data.samples import DataError
from anymae.core.data.shards import ShardSet, ShardSplit, ShardStream, resolve_shards

__all__ = ["log_sources", "split_dataset"]


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
    mix: list[tuple[ShardSet, float]] = []
    if split == "train" and stream.sources:
        for i, entry in enumerate(stream.sources):
            if "hf_dataset" in entry:
                raise DataError(f"data.sources[{i}]: a mix reads shards; pack the dataset with `anymae pack` first")
            mix.append((resolve_shards(entry["shards"], key=f"data.sources[{i}].shards"), entry.get("weight", 1.0)))
        shards = _joined([s for s, _ in mix])
    elif (split == "train" and stream.hf_dataset) or (split != "train" and stream.hf_heldout):
        return hf_split(modality, data, tokenizer, stream, split=split, labelled=labelled, augment=augment,
                        crop_pct=crop_pct)  # fmt: skip
    else:
        shards = resolve_shards(source, key=key)
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
            print(f"data: the {split} split reads {_short(source)}", flush=True)


def _short(source: Any) -> str:
    text = source if isinstance(source, str) else ", ".join(map(str, source))
    return text if len(text) < 200 else text[:197] + "..."
