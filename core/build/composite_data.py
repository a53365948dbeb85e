"""The data of a composite model: each part's own modality reads its own ``data.<part>`` section, and
the items of the parts are paired into ``{part: input}`` dicts.

Pairing is by the file an item is read from (``DatasetTraits.source``) when every part's dataset declares it:
the same file name in each part's folder (``video/train/x.mp4`` with ``audio/train/x.wav``), or one media file
that holds every part (an ``.mp4`` with a video and an audio stream, read by the video and the audio plugin).
Otherwise the parts' datasets must have the same length and are paired by index.

Alignment in time: when every part's training items are random windows of a recording (``DatasetTraits.timed``:
video clips, audio crops), one start time is drawn for the item and every part's window begins there, so a
10-second clip's 1.6 s of frames and 1.6 s of sound are the same 1.6 s. Other parts draw their own crops.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from anymae.core.config import PartConfig
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits, dataset_traits
from anymae.core.model.figures import add_caption
from anymae.plugins.manager import Registry

__all__ = ["CompositeModality", "PairedDataset", "PartsDeviceTransform", "stack_figures"]


class PairedDataset(DatasetWithTraits):
    """Part datasets -> items ``{part: input}`` (or ``({part: input}, label)`` with ``labelled``, the label of the
    first part that has one). A part that cannot read its item makes the whole item unreadable (a bad sample,
    counted and replaced by the training loop), with a message naming the part."""

    def __init__(self, parts: dict[str, Dataset], *, labelled: bool = False) -> None:
        self.parts, self.labelled = parts, labelled
        for name, dataset in parts.items():
            stacked = dataset_traits(dataset).samples_per_item
            if stacked != 1:
                raise DataError(f"data.{name}: its items stack {stacked} samples; a composite part needs one per item")
        self.index = _pair(parts)
        # Parts whose items are random windows of recordings (a clip, a crop): one start time for all of them.
        timed = {name: dataset_traits(dataset).timed for name, dataset in parts.items()}
        self.timed = timed if all(t is not None for t in timed.values()) and len(timed) > 1 else None
        if labelled:  # every part that names classes must name the same, in the same order
            named = {name: list(dataset_traits(d).classes) for name, d in parts.items() if dataset_traits(d).classes}
            if len({tuple(c) for c in named.values()}) > 1:
                raise DataError(f"the parts' labelled data name different classes: {named}")

    @property
    def traits(self) -> DatasetTraits:
        first = dataset_traits(next(iter(self.parts.values())))
        return DatasetTraits(classes=first.classes, multi_label=first.multi_label)

    @property
    def classes(self) -> list[str]:
        """Class names in index order (labelled data)."""
        return list(self.traits.classes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        inputs, label = {}, None
        start = self._shared_start(i)
        for name, j in self.index[i].items():
            try:
                item = self.parts[name][j] if start is None else self.timed[name].at(j, start)  # type: ignore[index]
            except Exception as exc:
                raise BadSampleError(f"part {name}: {exc}") from exc
            if isinstance(item, (list, tuple)):
                item, label = item[0], item[1] if label is None else label
            inputs[name] = item
        if not self.labelled:
            return inputs
        if label is None:
            raise DataError("no part of the composite's data gives labels")
        return inputs, label

    def _shared_start(self, i: int) -> float | None:
        """With timed parts: one start (seconds) drawn uniformly up to the latest at which every part's window
        still fits its file, so that the parts' windows begin at the same moment."""
        if self.timed is None:
            return None
        try:
            spans = [self.timed[name].span(j) for name, j in self.index[i].items()]
        except Exception as exc:
            raise BadSampleError(f"item {i}: {exc}") from exc
        latest = max(min(duration - window for duration, window in spans), 0.0)
        return float(torch.rand(())) * latest


def _pair(parts: dict[str, Dataset]) -> list[dict[str, int]]:
    """Item ``i`` -> ``{part: index}``: by source file (folder and name, without the suffix; the k-th item of a
    file in the first part with the k-th of that file, cyclically, in each other part), else by index."""
    names = list(parts)
    sources = {name: dataset_traits(parts[name]).source for name in names}
    sizes = {name: len(parts[name]) for name in names}  # type: ignore[arg-type]
    if any(source is None for source in sources.values()):
        if len(set(sizes.values())) != 1:
            raise DataError(
                "the parts' data sets differ in length and cannot be paired by file (a part's data set does not say "
                f"which file an item comes from): {', '.join(f'{n} {s}' for n, s in sizes.items())} items"
            )
        return [dict.fromkeys(names, i) for i in range(sizes[names[0]])]
    keys: dict[str, dict[str, list[int]]] = {}
    for name in names:
        by_key = defaultdict(list)
        for i in range(sizes[name]):
            by_key[_key(sources[name](i))].append(i)  # type: ignore[misc]
        keys[name] = by_key
    lead, others = names[0], names[1:]
    pairs, unmatched, seen = [], [], defaultdict(int)
    for i in range(sizes[lead]):
        key = _key(sources[lead](i))  # type: ignore[misc]
        k = seen[key]
        seen[key] += 1
        if all(key in keys[other] for other in others):
            pairs.append({lead: i, **{o: keys[o][key][k % len(keys[o][key])] for o in others}})
        else:
            unmatched.append(key)
    if not pairs:
        raise DataError(
            f"no file of part {lead!r} has a partner of the same name in every other part "
            f"({', '.join(others)}); first unmatched: {unmatched[0] if unmatched else 'none'}"
        )
    lead_keys = set(keys[lead])
    orphans = {other: sorted(set(keys[other]) - lead_keys) for other in others}  # files no lead item pairs with
    if unmatched or any(orphans.values()):
        lines = [f"part {lead!r}: {len(unmatched)} ({_first(unmatched)})"] if unmatched else []
        lines += [f"part {o!r}: {len(keys_)} ({_first(keys_)})" for o, keys_ in orphans.items() if keys_]
        warnings.warn(
            f"items with no partner of the same file name in every other part are left out: {'; '.join(lines)}",
            stacklevel=3,
        )
    return pairs


def _first(keys: list[str], shown: int = 5) -> str:
    """The first ``shown`` keys, and how many more."""
    more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _key(path: Path) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.stem}"


class CompositeModality:
    """The modalities of a composite's parts, each over its own ``data.<part>`` section."""

    name = "composite"

    def __init__(self, parts: dict[str, PartConfig], *, registry: Registry) -> None:
        self.configs = parts
        self.modalities = {name: registry.modality(part.modality) for name, part in parts.items()}

    def build_dataset(self, data: dict[str, Any], tokenizer: Any = None, *, split: str) -> PairedDataset | None:
        """The paired pre-training set of ``split``; None when no part has that split. ``tokenizer`` is unused
        (each part has its own, in ``model.parts``)."""
        sets = {
            name: modality.build_dataset(data[name], self.configs[name].tokenizer, split=split)
            for name, modality in self.modalities.items()
        }
        missing = [name for name, dataset in sets.items() if dataset is None]
        if len(missing) == len(sets):
            return None
        if missing:
            raise DataError(
                f"the {split} split exists for some parts but not for {', '.join(missing)}: set "
                f"{', '.join(f'data.{m}' for m in missing)} to a folder with that split, or none of the parts"
            )
        return PairedDataset(sets)  # type: ignore[arg-type]

    def build_labelled_dataset(
        self,
        data: dict[str, Any],
        tokenizer: Any = None,
        *,
        split: str,
        augment: dict[str, Any] | None = None,
        crop_pct: float = 0.875,
    ) -> PairedDataset:
        """Paired labelled items: each part's own augmentation for ``augment`` (its evaluation transform, with
        ``crop_pct``, when None)."""
        sets = {}
        for name, modality in self.modalities.items():
            tok = self.configs[name].tokenizer
            sets[name] = modality.build_labelled_dataset(
                data[name], tok, split=split, augment=augment, crop_pct=crop_pct
            )
        return PairedDataset(sets, labelled=True)

    def device_transform(
        self, data: dict[str, Any], tokenizer: Any = None, *, device: Any
    ) -> PartsDeviceTransform | None:
        """Each part's own device step (e.g. images with ``data.decode: gpu``), the other parts' inputs moved as
        they are; None when no part asks for one."""
        steps = {name: modality.device_transform(data[name], self.configs[name].tokenizer, device=device)
                 for name, modality in self.modalities.items()}  # fmt: skip
        if all(step is None for step in steps.values()):
            return None
        return PartsDeviceTransform(steps, device=device)


class PartsDeviceTransform:
    """A composite's device step: :meth:`collate` (in the DataLoader workers) collates each part's inputs with
    its own step's ``collate`` (plain stacking for a part without one); ``__call__(batch)`` runs each part's step
    on the device -> ``{part: (N, ...)}``. A sample a part's step finds unreadable is marked in ``batch["bad"]``
    (counted by the trainer) and, as for one modality, that part's input is another sample's of the batch."""

    def __init__(self, steps: dict[str, Any], *, device: Any) -> None:
        self.steps, self.device = steps, torch.device(device)
        self.collates = {name: step.collate if step is not None else None for name, step in steps.items()}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """SafeDataset items ``{"input": {part: x}, "bad", "mask"}`` -> one batch, ``input`` a dict of parts."""
        batch = default_collate([{k: v for k, v in item.items() if k != "input"} for item in items])
        batch["input"] = {}
        for name, collate in self.collates.items():
            inputs = [{"input": item["input"][name]} for item in items]
            batch["input"][name] = (collate or default_collate)(inputs)["input"]
        return batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for name, step in self.steps.items():
            if step is None:
                out[name] = batch["input"][name].to(self.device, non_blocking=True)
            else:  # the part's step marks unreadable samples in the shared batch["bad"]
                out[name] = step({**batch, "input": batch["input"][name]})
        return out


def stack_figures(figures: dict[str, Path], path: Path) -> Path:
    """Each part's figure, captioned with the part's name, one under the other, in one PNG at ``path``."""
    images = []
    for name, figure in figures.items():
        with Image.open(figure) as image:
            images.append(add_caption(image.convert("RGB"), f"part {name}"))
    width = max(image.width for image in images)
    canvas = Image.new("RGB", (width, sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    canvas.save(path)
    return path
