"""One shard sample decoded by the modality's own dataset code.

A modality reads files from its folder layout (``root/<split>/<class>/<file>``); a shard (or a ``datasets`` row)
holds the same file's bytes. :class:`ScratchDecoder` writes one sample's media into a small per-process scratch
folder laid out that way (in ``/dev/shm`` where there is one: memory, not disk), builds the modality's dataset over
it once per media kind, and reads the item back: the decoding, crops and augmentation are the modality's, byte
for byte. A dataset that declares ``from_bytes`` (:class:`DatasetTraits`) decodes the sample's bytes in memory
instead, with no file written (the image modality's JPEGs). A composite sample holds every part
(``<key>.<part>.<ext>``, or one media file all parts read).

Dense samples are decoded the same way by the modality's segmentation and detection datasets:
:class:`SegmentScratchDecoder` writes an image and its label map (``KEY.jpg`` + ``KEY.seg.png``) as the ADE20K
layout (``images/<split>/``, ``annotations/<split>/``); :class:`DetectScratchDecoder` writes an image and its
COCO instances JSON of that one image (``KEY.jpg`` + ``KEY.json``) as an images folder and its annotations file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from anymae.core.build.composite_data import CompositeModality
from anymae.core.config.stream import StreamConfig
from anymae.core.data.samples import BadSampleError, DataError, dataset_traits
from anymae.core.data.shards import describe, media_parts, sample_label

__all__ = [
    "MASK_PART",
    "DetectScratchDecoder",
    "ScratchDecoder",
    "SegmentScratchDecoder",
    "coco_located",
    "coco_sample",
]

_SCRATCH_PREFIX = "anymae-shards-"
MASK_PART = "seg"  # a segmentation sample's label map: KEY.seg.png beside KEY.jpg


class ScratchDecoder:
    """``decode(sample) -> [item, ...]``: the items the modality's dataset makes of the sample's media file (one, or
    one per view, e.g. held-out zooms), with the label from the sample's ``cls`` when ``labelled``."""

    def __init__(
        self,
        modality: Any,
        data: Any,
        tokenizer: Any,
        *,
        split: str,
        labelled: bool,
        augment: dict[str, Any] | None,
        crop_pct: float,
    ) -> None:
        self.modality, self.data, self.tokenizer = modality, data, tokenizer
        self.split, self.labelled, self.augment, self.crop_pct = split, labelled, augment, crop_pct
        composite = isinstance(modality, CompositeModality)
        self.parts: dict[str, Any] = dict(modality.modalities) if composite else {"": modality}
        self.pid = -1
        self.folder = Path()
        self.built: dict[tuple[str, ...], tuple[Dataset, dict[str, Path]]] = {}

    def __call__(self, sample: dict[str, Any]) -> list[Any]:
        media = self._media(sample)
        dataset, files = self._dataset(tuple(name.rsplit(".", 1)[-1] for name in media.values()))
        items = self._from_memory(dataset, sample, media)
        if items is None:
            for part, name in media.items():
                _replace(files[part], sample[name])
            items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        if self.labelled:
            label = sample_label(sample)
            items = [(item[0], label) for item in items]
        return items

    def _from_memory(self, dataset: Dataset, sample: dict[str, Any], media: dict[str, str]) -> list[Any] | None:
        """The items decoded from the sample's bytes by a dataset that declares ``from_bytes`` (one media file, one
        part); None when the scratch file is needed."""
        from_bytes = dataset_traits(dataset).from_bytes
        if from_bytes is None or len(media) != 1:
            return None
        name = next(iter(media.values()))
        return from_bytes(sample[name], Path(f"{sample.get('__url__', 'shard')}:{sample.get('__key__', '?')}.{name}"))

    def _media(self, sample: dict[str, Any]) -> dict[str, str]:
        """Part -> the name of its media in the sample (``video.mp4`` for part ``video``; the one media file when
        all parts read it)."""
        found = media_parts(sample)
        if len(self.parts) == 1 and "" in self.parts:
            if len(found) != 1:
                raise BadSampleError(f"{describe(sample)}: expected one media file, found {sorted(found) or 'none'}")
            return {"": next(iter(found))}
        media = {}
        for part in self.parts:
            own = [name for name in found if name.startswith(f"{part}.")]
            if len(own) == 1:
                media[part] = own[0]
            elif len(found) == 1:
                media[part] = next(iter(found))
            else:
                raise BadSampleError(
                    f"{describe(sample)}: no media for part {part!r} ('{part}.<ext>'); it holds {sorted(found)}"
                )
        return media

    def _dataset(self, kinds: tuple[str, ...]) -> tuple[Dataset, dict[str, Path]]:
        """The modality's dataset over a scratch folder holding one file per part, of these extensions (built once
        per extensions and process: a worker forked from this process makes its own)."""
        if self.pid != os.getpid():
            self.pid, self.built, self.folder = os.getpid(), {}, _process_folder(self)
        if kinds in self.built:
            return self.built[kinds]
        base = self.folder / str(len(self.built))
        files, data = {}, {}
        for (part, modality), kind in zip(self.parts.items(), kinds, strict=True):
            root = base / (part or "data")
            (root / "train" / "a").mkdir(parents=True)
            (root / "train" / "b").mkdir()  # a second (empty) class: classification needs two
            (root / "heldout").symlink_to("train")
            files[part] = root / "train" / "a" / f"item.{kind}"
            files[part].write_bytes(b"")
            part_data = self.data[part] if part else self.data
            data[part] = _located(part_data, modality, root)
        section = data.get("", data)
        if self.labelled:
            dataset = self.modality.build_labelled_dataset(section, self.tokenizer, split=self.split,
                                                           augment=self.augment, crop_pct=self.crop_pct)  # fmt: skip
        else:
            dataset = self.modality.build_dataset(section, self.tokenizer, split=self.split)
        if dataset is None:
            raise DataError(f"modality {self.modality.name!r} made no {self.split} dataset of a shard sample")
        self.built[kinds] = (dataset, files)
        return dataset, files


class SegmentScratchDecoder:
    """``decode(sample) -> [(image, mask)]``: a segmentation sample (its image and its label map ``seg.<ext>``)
    read by the modality's segmentation dataset (``train``: its training pipeline, else full resolution)."""

    def __init__(self, modality: Any, data: Any, tokenizer: Any, *, split: str, train: bool) -> None:
        self.modality, self.data, self.tokenizer, self.split, self.train = modality, data, tokenizer, split, train
        self.pid = -1
        self.folder = Path()
        self.built: dict[tuple[str, str], tuple[Dataset, Path, Path]] = {}

    def __call__(self, sample: dict[str, Any]) -> list[Any]:
        found = media_parts(sample)
        masks = [name for name in found if name.startswith(f"{MASK_PART}.")]
        images = [name for name in found if name not in masks]
        if len(masks) != 1 or len(images) != 1:
            raise BadSampleError(f"{describe(sample)}: a segmentation sample holds one image and one label map "
                                 f"'{MASK_PART}.<ext>'; it holds {sorted(found) or 'no media'}")  # fmt: skip
        dataset, image_file, mask_file = self._dataset(images[0].rsplit(".", 1)[-1], masks[0].rsplit(".", 1)[-1])
        _replace(image_file, sample[images[0]])
        _replace(mask_file, sample[masks[0]])
        return [dataset[0]]

    def _dataset(self, image_kind: str, mask_kind: str) -> tuple[Dataset, Path, Path]:
        """The modality's segmentation dataset over one image and its mask in the ADE20K layout (built once per
        extensions and process)."""
        if self.pid != os.getpid():
            self.pid, self.built, self.folder = os.getpid(), {}, _process_folder(self)
        kinds = (image_kind, mask_kind)
        if kinds not in self.built:
            root = self.folder / f"segment-{len(self.built)}"
            image_file = root / "images" / "s" / f"item.{image_kind}"
            mask_file = root / "annotations" / "s" / f"item.{mask_kind}"  # paired with the image by its stem
            for file in (image_file, mask_file):
                file.parent.mkdir(parents=True)
                file.write_bytes(b"")
            data = _without_stream(self.data, root=str(root), train_split="s", heldout_split="s", train_list=None,
                                   heldout_list=None)  # fmt: skip
            dataset = self.modality.build_segmentation_dataset(data, self.tokenizer, split=self.split, train=self.train)
            self.built[kinds] = (dataset, image_file, mask_file)
        return self.built[kinds]


def coco_sample(sample: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A detection sample's image part and its COCO instances JSON of that one image (``images`` of one entry,
    ``annotations``, ``categories``); BadSampleError naming the sample otherwise."""
    found = media_parts(sample)
    if len(found) != 1 or "json" not in sample:
        raise BadSampleError(f"{describe(sample)}: a detection sample holds one image and its COCO annotations "
                             f"'json'; it holds {sorted(k for k in sample if not k.startswith('__'))}")  # fmt: skip
    try:
        coco = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSampleError(f"{describe(sample)}: its 'json' is not JSON: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or len(coco["images"]) != 1:
        raise BadSampleError(f"{describe(sample)}: its 'json' is not a COCO instances file of one image")
    return next(iter(found)), coco


class DetectScratchDecoder:
    """``decode(sample) -> [(image, target)]``: a detection sample (its image and a COCO instances JSON of that
    image) read by the modality's detection dataset, with ``augment`` as the folder's split takes it."""

    def __init__(self, modality: Any, data: Any, tokenizer: Any, *, split: str, augment: dict[str, Any] | None) -> None:
        self.modality, self.data, self.tokenizer, self.split, self.augment = modality, data, tokenizer, split, augment
        self.pid = -1
        self.folder = Path()

    def __call__(self, sample: dict[str, Any]) -> list[Any]:
        image, coco = coco_sample(sample)
        if self.pid != os.getpid():
            self.pid, self.folder = os.getpid(), _process_folder(self)
            (self.folder / "images").mkdir()
        name = f"item.{image.rsplit('.', 1)[-1]}"
        _replace(self.folder / "images" / name, sample[image])
        coco = {**coco, "images": [{**coco["images"][0], "file_name": name}]}
        _replace(self.folder / "annotations.json", json.dumps(coco).encode())
        # Built for each sample: the annotations are the sample's (reading one image's JSON is cheap).
        dataset = self.modality.build_detection_dataset(coco_located(self.data, self.folder), self.tokenizer,
                                                        split=self.split, augment=self.augment)  # fmt: skip
        return [dataset[0]]


def coco_located(data: Any, folder: Path) -> Any:
    """A detection ``data`` section reading ``folder/images/`` and ``folder/annotations.json`` for both splits, with
    no stream keys."""
    return _without_stream(data, root=str(folder), train_images="images", heldout_images="images",
                           train_annotations="annotations.json", heldout_annotations="annotations.json",
                           train_subset=None)  # fmt: skip


def _replace(file: Path, payload: bytes) -> None:
    """``file`` replaced by a new file holding ``payload`` (a new inode and time: no stale per-file cache)."""
    staged = file.with_name(".staged")
    staged.write_bytes(payload)
    os.replace(staged, file)


def _without_stream(data: Any, **location: Any) -> Any:
    """``data`` at ``location`` (a scratch folder) with no stream keys."""
    reset = {f.name: getattr(StreamConfig(), f.name) for f in dataclasses.fields(StreamConfig)}
    return dataclasses.replace(data, **(reset if isinstance(data, StreamConfig) else {}), **location)


def _process_folder(owner: object) -> Path:
    """A new scratch folder for this process, removed when ``owner`` goes, by the process that made it (a forked
    copy must not remove it); the folders of DataLoader workers, which end without collecting garbage, by the next
    start."""
    folder = _scratch_folder()
    weakref.finalize(owner, _remove, folder, os.getpid())
    return folder


def _located(data: Any, modality: Any, root: Path) -> Any:
    """``data`` reading its splits from ``root`` (``train``, ``heldout``), its other location keys at their
    defaults and no stream keys (the scratch folder is a folder)."""
    defaults = type(data)()
    reset = {key: getattr(defaults, key) for key in modality.data_location_keys}
    if isinstance(data, StreamConfig):
        reset.update({f.name: getattr(StreamConfig(), f.name) for f in dataclasses.fields(StreamConfig)})
    return dataclasses.replace(data, root=str(root), train_split="train", heldout_split="heldout", **reset)


def _scratch_folder() -> Path:
    """This process's scratch folder (in ``/dev/shm`` when there is one); the folders of processes that are gone
    (DataLoader workers end without cleaning up) are removed first."""
    parent = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    for old in parent.glob(f"{_SCRATCH_PREFIX}*"):
        pid = old.name[len(_SCRATCH_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=parent))


def _remove(folder: Path, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
