"""One shard sample decoded by the modality's own dataset code.

A modality reads files from its folder layout (``root/<split>/<class>/<file>``); a shard (or a ``datasets`` row)
holds the same file's bytes. :class:`ScratchDecoder` writes one sample's media into a small per-process scratch
folder laid out that way (in ``/dev/shm`` where there is one: memory, not disk), builds the modality's dataset over
it once per media kind, and reads the item back: the decoding, crops and augmentation are the modality's, byte
for byte. A composite sample holds every part (``<key>.<part>.<ext>``, or one media file all parts read).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from anymae.core.build.composite_data import CompositeModality
from anymae.core.config.stream import StreamConfig
from anymae.core.data.samples import BadSampleError, DataError
from anymae.core.data.shards import describe, media_parts, sample_label

__all__ = ["ScratchDecoder"]

_SCRATCH_PREFIX = "anymae-shards-"


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
        for part, name in media.items():
            staged = files[part].with_name(".staged")
            staged.write_bytes(sample[name])
            os.replace(staged, files[part])  # a new file (new inode and time): no stale per-file cache
        items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        if self.labelled:
            label = sample_label(sample)
            items = [(item[0], label) for item in items]
        return items

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
            self.pid, self.built, self.folder = os.getpid(), {}, _scratch_folder()
            # Removed when this decoder goes, by the process that made it (a forked copy must not remove it); the
            # folders of DataLoader workers, which end without collecting garbage, by the next start.
            weakref.finalize(self, _remove, self.folder, os.getpid())
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
