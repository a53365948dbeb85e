"""Where a split's samples come from when they are not files in a folder: tar shards (WebDataset), a mix of
sources, a Hugging Face ``datasets`` folder. These keys belong to the core, not to a modality: every modality's
``data`` section accepts them (:func:`with_stream` adds them to the modality's ``data_config``), and so does a
composite's ``data`` (beside its parts' sections), whose shards hold every part of one item.

Given on the command line over a config that names a folder, shards replace that split's folder; the other keys
of the section (transforms, statistics) still apply.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

from anymae.core.config.validate import from_dict

__all__ = ["STREAM_KEYS", "StreamConfig", "composite_stream", "data_section", "stream_config", "with_stream"]


@dataclasses.dataclass
class StreamConfig:
    """``data`` keys that read a split from shards or another dataset library instead of a folder."""

    shards: str | list[str] | None = None  # training split: a folder of .tar, a brace pattern, URLs (pipe:, http)
    heldout_shards: str | list[str] | None = None  # the held-out split, the same forms
    shuffle_buffer: int = 1000  # training samples held and drawn from at random (seeded); 0: shard order only
    samples_per_epoch: int | None = None  # an epoch's samples over all ranks; default: the shards' count (manifest)
    # A mix of training sources, each {shards: ..., weight: w} (or {hf_dataset: ..., weight: w}), drawn in proportion.
    sources: list[dict[str, Any]] | None = None
    hf_dataset: str | None = None  # training split: a `datasets` folder (save_to_disk), parquet files or a hub name
    hf_heldout: str | None = None  # ... the held-out split (a folder's "test"/"validation" split when it has one)
    hf_input_column: str = "image"  # the column holding the media (bytes, or {"bytes": ...} as datasets stores it)
    hf_label_column: str = "label"  # the column holding the class index (labelled commands)
    # Read hf_dataset / hf_heldout's parquet files as shards, row by row in file order with pyarrow (no conversion
    # to an Arrow cache first): the shard machinery (rank x worker split, shuffle buffer, exact resume) applies.
    hf_streaming: bool = False

    def __post_init__(self) -> None:
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {self.samples_per_epoch}")
        given = [k for k in ("shards", "sources", "hf_dataset") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} each name the training split: give one of them")
        for i, source in enumerate(self.sources or []):
            unknown = sorted(set(source) - {"shards", "hf_dataset", "weight"})
            if unknown or ("shards" in source) == ("hf_dataset" in source):
                raise ValueError(f"sources[{i}] must be {{shards: ..., weight: w}} or {{hf_dataset: ..., weight: w}}, "
                                 f"got {source}")  # fmt: skip
            if not isinstance(source.get("weight", 1.0), (int, float)) or source.get("weight", 1.0) <= 0:
                raise ValueError(f"sources[{i}].weight must be a positive number, got {source.get('weight')}")
        # Keys of a streamed training split mean nothing for a folder: refused by name rather than ignored.
        if not self.streams:
            for key, default in (("shuffle_buffer", 1000), ("samples_per_epoch", None)):
                if getattr(self, key) != default:
                    raise ValueError(f"{key} applies to a training split read from shards (shards, sources or "
                                     "hf_dataset); this one reads a folder")  # fmt: skip
        if not (self.hf_dataset or self.hf_heldout or any("hf_dataset" in s for s in self.sources or [])):
            for key, default in (("hf_input_column", "image"), ("hf_label_column", "label"), ("hf_streaming", False)):
                if getattr(self, key) != default:
                    raise ValueError(f"{key} names a column of hf_dataset / hf_heldout, and neither is set")

    @property
    def streams(self) -> bool:
        """The training split is read from shards, a mix or a ``datasets`` table (not from the modality's folder)."""
        return bool(self.shards or self.sources or self.hf_dataset)

    def split_source(self, split: str) -> Any:
        """What ``split`` ("train" / "heldout") reads instead of the modality's folder: shards, sources or a
        ``datasets`` name; None when the split is read from the folder."""
        if split == "train":
            return self.shards or self.sources or self.hf_dataset
        return self.heldout_shards or self.hf_heldout


STREAM_KEYS = tuple(f.name for f in dataclasses.fields(StreamConfig))


@cache
def with_stream(cls: type) -> type:
    """The modality data section ``cls`` with the :class:`StreamConfig` keys added (a subclass, so that the
    modality reads it as its own); both ``__post_init__`` checks run."""
    if issubclass(cls, StreamConfig):
        return cls

    def __post_init__(self: Any) -> None:
        if hasattr(cls, "__post_init__"):
            cls.__post_init__(self)
        StreamConfig.__post_init__(self)

    def __reduce__(self: Any) -> Any:  # picklable although the class is made here: rebuilt from the base class
        return _rebuild, (cls, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    return dataclasses.make_dataclass(
        cls.__name__,
        [],
        bases=(StreamConfig, cls),  # the modality's keys first in messages
        namespace={"__post_init__": __post_init__, "__reduce__": __reduce__, "__module__": cls.__module__},
    )


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return with_stream(cls)(**values)


def data_section(cls: type, raw: Any, where: str) -> Any:
    """A modality's ``data`` section (``raw``) validated against its ``data_config`` plus the stream keys."""
    return from_dict(with_stream(cls), raw, where)


def stream_config(data: Any) -> StreamConfig | None:
    """The stream keys of a validated ``data`` section (a modality's, or a composite's dict of parts, which
    keeps them under ``"stream"``); None for a section without them."""
    if isinstance(data, StreamConfig):
        return data
    if isinstance(data, dict) and isinstance(data.get("stream"), StreamConfig):
        return data["stream"]
    return None


def composite_stream(raw: dict[str, Any]) -> StreamConfig:
    """A composite's ``data`` stream keys (top level, or a saved config's ``stream`` section), removed from
    ``raw``."""
    saved = raw.pop("stream", None) or {}
    given = {key: raw.pop(key) for key in STREAM_KEYS if key in raw}
    return from_dict(StreamConfig, {**saved, **given}, "data")
