"""``anymae pack SRC DEST --modality M``: a folder or list file that anymae reads, as tar shards (the WebDataset
layout) with a ``DEST/manifest.json``.

The files are the ones the modality's training split lists (its own extensions, its own folder rules); each
becomes one sample: its bytes as they are (no re-encoding) under its lower-case extension, the class index of
its class folder (or its list line's label) as ``cls``, and its path relative to SRC, without the extension, as
``__key__``. A file that cannot be read is named, left out and counted. The samples are shuffled (seeded) before
they are dealt into shards, so that a shuffle buffer mixes classes from the first batch; ``split_by_class`` keeps
each class in shards of its own instead.

``task="segment"``: SRC is the images folder of a split in the ADE20K layout (``ROOT/images/<split>``, masks from
``ROOT/annotations/<split>``) or a list file of ``image mask`` lines; a sample is the image and its label map
(``KEY.jpg`` + ``KEY.seg.png``), paired by the modality's segmentation dataset. ``task="detect"``: SRC is a COCO
instances JSON and ``images`` its image folder; a sample is the image and a COCO instances JSON of that one image
(``KEY.jpg`` + ``KEY.json``: its entry, the annotations the modality's reader kept, every category), and what the
reader dropped or clipped is printed. The ``cls`` part and ``split_by_class`` are classification's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from anymae.core.build.composite_data import PairedDataset
from anymae.core.build.scratch import MASK_PART
from anymae.core.config.stream import with_stream
from anymae.core.data.files import read_file_list
from anymae.core.data.samples import DataError, dataset_traits
from anymae.core.data.shards import MANIFEST
from anymae.plugins.manager import Registry

__all__ = ["TASKS", "PackReport", "pack"]

TASKS = ("classify", "segment", "detect")  # what a sample holds: a file and its class | image + mask | image + COCO


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
    modality: str = "",
    registry: Registry,
    shard_size: int = 1000,
    split_by_class: bool = False,
    seed: int = 0,
    progress: bool = True,
    task: str = "classify",
    images: str | Path | None = None,
    parts: dict[str, str] | None = None,
) -> PackReport:
    """Write the files of ``src`` (a folder: class folders or flat; or a list file of ``path [label]`` lines) into
    shards of at most ``shard_size`` samples under ``dest``, and ``dest/manifest.json``; ``task``: what a sample
    holds (:data:`TASKS`), ``images``: the image folder of a COCO JSON (``detect``); ``parts``: a composite's parts
    (name -> modality), one sample holding every part of an item."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if task not in TASKS:
        raise DataError(f"--task must be one of {list(TASKS)}, got {task!r}")
    if task != "classify" and split_by_class:
        raise DataError(f"--split-by-class keeps classes apart; --task {task} samples have no class")
    if (images is not None) != (task == "detect"):
        raise DataError("--images names the image folder of a COCO JSON: it goes with --task detect, and only there")
    if bool(modality) == bool(parts):
        raise DataError("pack: give --modality (one modality) or --parts (a composite's parts), one of them")
    if parts and task != "classify":
        raise DataError(f"pack: --task {task} samples are of one modality; --parts packs a composite's items")
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    bad: list[str] = []  # "path: reason" of files left out while listing
    if task == "segment":
        items, classes = _segment_listed(src, bad, modality=modality, registry=registry), []
    elif task == "detect":
        images = Path(images or "").expanduser().resolve()
        items, classes = _coco_listed(src, images, modality=modality, registry=registry), []
    elif parts:
        items, classes = _composite_listed(src, parts, registry=registry)
        src = Path(str(src).replace("{part}", next(iter(parts)))) if "{part}" in str(src) else src / next(iter(parts))
    else:
        items, classes = _listed(src, modality=modality, registry=registry)
    if split_by_class:
        groups = [[item for item in items if item[2] == c] for c in range(len(classes))]
        groups += [[item for item in items if item[2] is None]]
    else:
        random.Random(seed).shuffle(items)
        groups = [items]
    dest.mkdir(parents=True, exist_ok=True)
    base = Path(images) if images is not None else src.parent if src.is_file() else src
    report = PackReport([], [], classes, bad)
    now = int(time.time())  # whole seconds: a float time makes every member carry a pax header, slower to read
    bar = tqdm(total=len(items), desc=f"pack {src.name}", unit="file", disable=not progress, dynamic_ncols=True)
    for group in groups:
        for start in range(0, len(group), shard_size):
            path = dest / f"shard-{len(report.shards):06d}.tar"
            count = 0
            with wds.TarWriter(str(path), mtime=now) as writer:
                for item in group[start : start + shard_size]:
                    bar.update()
                    sample = _sample(item, base, report)
                    if sample is not None:
                        writer.write(sample)
                        count += 1
            report.shards.append(path)
            report.counts.append(count)
    bar.close()
    manifest = {
        "modality": modality or "composite",
        "parts": parts or {},
        "task": task,
        "source": str(src),
        "samples": report.samples,
        "shards": [{"name": p.name, "count": n} for p, n in zip(report.shards, report.counts, strict=True)],
        "classes": classes,
        "bad": len(report.bad),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return report


# One sample to write: its files by part name (``jpg``, ``seg.png``: the file's extension is added), bytes of parts
# made here (``json``), and its class index (None: unlabelled).
_Item = tuple[dict[str, Path], dict[str, bytes], int | None]


def _sample(item: _Item, base: Path, report: PackReport) -> dict[str, Any] | None:
    """The sample of ``item`` (keyed by its first file), or None when a file cannot be read (named in ``report``)."""
    files, made, label = item
    first = next(iter(files.values()))
    sample: dict[str, Any] = {"__key__": _key(first, base)}
    for part, file in files.items():
        try:
            payload = file.read_bytes()
            if not payload:
                raise OSError("the file is empty")
        except OSError as exc:
            report.bad.append(f"{file}: {exc.strerror or exc}")
            print(f"bad file {report.bad[-1]}", flush=True)
            return None
        extension = file.suffix.lower().lstrip(".")
        sample[f"{part}.{extension}" if part else extension] = payload
    sample.update(made)
    if label is not None:
        sample["cls"] = str(label).encode()
    return sample


def _key(file: Path, base: Path) -> str:
    """The sample key: the path under ``base`` without its extension; dots become ``_`` (WebDataset splits a file
    name into key and part at its first dot)."""
    try:
        relative = file.relative_to(base)
    except ValueError:
        relative = Path(file.name)
    return str(relative.with_suffix("")).replace(".", "_")


def _listed(src: Path, *, modality: str, registry: Registry) -> tuple[list[_Item], list[str]]:
    """One item per file of ``src`` (with its class index or None), and the class names."""
    if src.is_file():
        listed = read_file_list(src, src.parent, what="file")
        labels = [label for _, label in listed if label is not None]
        return [({"": f}, {}, label) for f, label in listed], [str(i) for i in range(max(labels) + 1)] if labels else []
    dataset, source = _folder_dataset(src, modality=modality, registry=registry)
    files = list(dict.fromkeys(Path(source(i)) for i in range(len(dataset))))
    label, folders = _class_folders(src, files)
    return [({"": f}, {}, label(f)) for f in files], folders


def _folder_dataset(src: Path, *, modality: str, registry: Registry) -> tuple[Any, Callable[[int], Path]]:
    """The modality's training dataset over the split folder ``src``, and the file each item is read from."""
    if not src.is_dir():
        raise DataError(f"pack: {src} is neither a folder nor a list file")
    reader = registry.modality(modality)
    cls = with_stream(reader.data_config)
    defaults = cls()
    data = dataclasses.replace(defaults, root=str(src.parent), train_split=src.name,
                               **{k: getattr(defaults, k) for k in reader.data_location_keys})  # fmt: skip
    dataset: Any = reader.build_dataset(data, reader.tokenizer_config(), split="train")
    source = dataset_traits(dataset).source
    if source is None:
        raise DataError(f"pack: modality {modality!r}'s dataset does not say which file an item is read from")
    return dataset, source


def _class_folders(src: Path, files: list[Path]) -> tuple[Callable[[Path], int | None], list[str]]:
    """The class index of a file of ``src`` (its first folder below ``src``; None: directly in it), and the names."""
    folders = sorted({f.relative_to(src).parts[0] for f in files if len(f.relative_to(src).parts) > 1})
    index = {name: i for i, name in enumerate(folders)}

    def label(file: Path) -> int | None:
        parts = file.relative_to(src).parts
        return index.get(parts[0]) if len(parts) > 1 else None

    return label, folders


def _composite_listed(src: Path, parts: dict[str, str], *, registry: Registry) -> tuple[list[_Item], list[str]]:
    """One item per paired composite item: each part's file (``<part>.<ext>``; one file all parts read is written
    once), paired by file name as the composite's data pairs them; the class of the first part's class folder.
    Part ``p``'s split folder is ``src`` with ``{part}`` replaced by ``p``, or ``src/p``."""
    folders = {name: Path(str(src).replace("{part}", name)) if "{part}" in str(src) else src / name for name in parts}
    sets, sources = {}, {}
    for name, modality in parts.items():
        sets[name], sources[name] = _folder_dataset(folders[name], modality=modality, registry=registry)
    lead = next(iter(parts))
    paired = list({tuple((n, Path(sources[n](i))) for n, i in item.items()): None
                   for item in PairedDataset(sets).index})  # fmt: skip
    label, classes = _class_folders(folders[lead], [dict(p)[lead] for p in paired])
    items: list[_Item] = []
    for pair in paired:
        files = dict(pair)
        if len(set(files.values())) == 1:  # one media file that every part reads
            files = {"": files[lead]}
        items.append((files, {}, label(dict(pair)[lead])))
    return items, classes


def _segment_listed(src: Path, bad: list[str], *, modality: str, registry: Registry) -> list[_Item]:
    """``(image, label map)`` samples of an ADE20K images folder or a list file, paired by the modality's
    segmentation dataset; an image without a mask is named and left out."""
    reader = registry.modality(modality)
    if reader.segmentation_data_config is None:
        raise DataError(f"pack --task segment: modality {modality!r} provides no segmentation data")
    if src.is_file():
        location = {"root": str(src.parent), "train_list": src.name}
    elif src.is_dir() and src.parent.name == "images":
        location = {"root": str(src.parent.parent), "train_split": src.name}
    else:
        raise DataError(f"pack --task segment: {src} is neither an images/<split> folder (ADE20K layout) nor a "
                        "list file of 'image mask' lines")  # fmt: skip
    # Any class count: pack reads no mask; the dataset only pairs the files.
    data = reader.segmentation_data_config(num_classes=2, **location)
    dataset: Any = reader.build_segmentation_dataset(data, reader.tokenizer_config(), split="train", train=False)
    items: list[_Item] = []
    for image, mask in dataset.pairs:
        if mask is None:
            bad.append(f"{image}: no mask (paired by file name without its suffix)")
            print(f"bad file {bad[-1]}", flush=True)
            continue
        items.append(({"": image, MASK_PART: mask}, {}, None))
    return items


def _coco_listed(src: Path, images: Path, *, modality: str, registry: Registry) -> list[_Item]:
    """``(image, its COCO JSON)`` samples of a COCO instances file and its image folder, read by the modality's
    detection dataset; what the reader dropped or clipped is printed."""
    reader = registry.modality(modality)
    if reader.detection_data_config is None:
        raise DataError(f"pack --task detect: modality {modality!r} provides no detection data")
    if not src.is_file():
        raise DataError(f"pack --task detect: SRC must be a COCO instances JSON, got {src}")
    data = reader.detection_data_config(root=str(src.parent), train_annotations=str(src.resolve()),
                                        train_images=str(images.expanduser().resolve()))  # fmt: skip
    dataset: Any = reader.build_detection_dataset(data, reader.tokenizer_config(), split="train", augment=None)
    coco = dataset.instances
    for line in coco.report.summary().splitlines():
        print(f"{src.name}: {line}", flush=True)
    items: list[_Item] = []
    for image in coco.images:
        entry = {"id": image.id, "file_name": image.path.name, "height": image.height, "width": image.width}
        one = {"images": [entry], "annotations": coco.annotations.get(image.id, []), "categories": coco.categories}
        items.append(({"": image.path}, {"json": json.dumps(one).encode()}, None))
    return items
