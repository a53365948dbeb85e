"""``anymae pack SRC DEST --modality M``: a folder or list file that anymae reads, as tar shards (the WebDataset
layout) with a ``DEST/manifest.json``.

The files are the ones the modality's training split lists (its own extensions, its own folder rules); each
becomes one sample: its bytes as they are (no re-encoding) under its lower-case extension, the class index of
its class folder (or its list line's label) as ``cls``, and its path relative to SRC, without the extension, as
``__key__``. A file that cannot be read is named, left out and counted. The samples are shuffled (seeded) before
they are dealt into shards, so that a shuffle buffer mixes classes from the first batch; ``split_by_class`` keeps
each class in shards of its own instead.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from anymae.core.config.stream import with_stream
from anymae.core.data.files import read_file_list
from anymae.core.data.samples import DataError, dataset_traits
from anymae.core.data.shards import MANIFEST
from anymae.plugins.manager import Registry

__all__ = ["PackReport", "pack"]


@dataclass
class PackReport:
    """What :func:`pack` wrote: the shard files, the samples in each, the classes, and the files it left out."""

    shards: list[Path]
    counts: list[int]
    classes: list[str]
    bad: list[str] = field(default_factory=list)  # "path: reason", one per file left out

    @property
    def samples(self) -> int:
        return sum(self.counts)


def pack(
    src: str | Path,
    dest: str | Path,
    *,
    modality: str,
    registry: Registry,
    shard_size: int = 1000,
    split_by_class: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> PackReport:
    """Write the files of ``src`` (a folder: class folders or flat; or a list file of ``path [label]`` lines) into
    shards of at most ``shard_size`` samples under ``dest``, and ``dest/manifest.json``."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    items, classes = _listed(src, modality=modality, registry=registry)
    if split_by_class:
        groups = [[item for item in items if item[1] == c] for c in range(len(classes))]
        groups += [[item for item in items if item[1] is None]]
    else:
        random.Random(seed).shuffle(items)
        groups = [items]
    dest.mkdir(parents=True, exist_ok=True)
    base = src.parent if src.is_file() else src
    report = PackReport([], [], classes)
    now = int(time.time())  # whole seconds: a float time makes every member carry a pax header, slower to read
    bar = tqdm(total=len(items), desc=f"pack {src.name}", unit="file", disable=not progress, dynamic_ncols=True)
    for group in groups:
        for start in range(0, len(group), shard_size):
            path = dest / f"shard-{len(report.shards):06d}.tar"
            count = 0
            with wds.TarWriter(str(path), mtime=now) as writer:
                for file, label in group[start : start + shard_size]:
                    bar.update()
                    try:
                        payload = file.read_bytes()
                        if not payload:
                            raise OSError("the file is empty")
                    except OSError as exc:
                        report.bad.append(f"{file}: {exc.strerror or exc}")
                        print(f"bad file {report.bad[-1]}", flush=True)
                        continue
                    sample = {"__key__": _key(file, base), file.suffix.lower().lstrip("."): payload}
                    if label is not None:
                        sample["cls"] = str(label).encode()
                    writer.write(sample)
                    count += 1
            report.shards.append(path)
            report.counts.append(count)
    bar.close()
    manifest = {
        "modality": modality,
        "source": str(src),
        "samples": report.samples,
        "shards": [{"name": p.name, "count": n} for p, n in zip(report.shards, report.counts, strict=True)],
        "classes": classes,
        "bad": len(report.bad),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return report


def _key(file: Path, base: Path) -> str:
    """The sample key: the path under ``base`` without its extension; dots become ``_`` (WebDataset splits a file
    name into key and part at its first dot)."""
    try:
        relative = file.relative_to(base)
    except ValueError:
        relative = Path(file.name)
    return str(relative.with_suffix("")).replace(".", "_")


def _listed(src: Path, *, modality: str, registry: Registry) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """``(file, class index or None)`` of every file of ``src``, and the class names."""
    if src.is_file():
        items = read_file_list(src, src.parent, what="file")
        labels = [label for _, label in items if label is not None]
        return list(items), [str(i) for i in range(max(labels) + 1)] if labels else []
    if not src.is_dir():
        raise DataError(f"pack: {src} is neither a folder nor a list file")
    reader = registry.modality(modality)
    cls = with_stream(reader.data_config)
    defaults = cls()
    data = dataclasses.replace(defaults, root=str(src.parent), train_split=src.name,
                               **{k: getattr(defaults, k) for k in reader.data_location_keys})  # fmt: skip
    tokenizer = reader.tokenizer_config()
    dataset: Any = reader.build_dataset(data, tokenizer, split="train")
    source = dataset_traits(dataset).source
    if source is None:
        raise DataError(f"pack: modality {modality!r}'s dataset does not say which file an item is read from")
    files = list(dict.fromkeys(Path(source(i)) for i in range(len(dataset))))
    folders = sorted({f.relative_to(src).parts[0] for f in files if len(f.relative_to(src).parts) > 1})
    index = {name: i for i, name in enumerate(folders)}
    items = [(f, index.get(f.relative_to(src).parts[0]) if len(f.relative_to(src).parts) > 1 else None)
             for f in files]  # fmt: skip
    return items, folders
