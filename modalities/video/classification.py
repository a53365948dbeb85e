"""Labelled videos for ``anymae finetune`` / ``linprobe`` / ``eval``: class lists, VideoMAE's fine-tuning and test
clip sampling, and frame transforms applied identically to every frame of a clip.

Augmentation is the image plugin's (timm ``create_transform`` for fine-tuning: RandomResizedCrop 0.08-1 +
flip + RandAugment + random erasing; RandomResizedCrop + flip for the linear probe) run on each frame's PIL
image after restoring the python, numpy and torch generators to one saved state, so every frame of a clip
gets the same crop, flip, RandAugment ops and magnitudes and erased box: VideoMAE's ``create_random_augment``
and "cube" random erasing also act on the whole clip (its erased box gets fresh noise in every frame, here the
same noise).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

from anymae.core.data.files import class_folder_samples, class_folders, read_classes_file
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

from .data import read_list
from .decode import VIDEO_EXTENSIONS, read_clips_at
from .sampling import eval_indices, train_indices
from .transforms import multi_crop_views

__all__ = [
    "LabelledVideos",
    "clip_transform",
    "eval_transform",
    "labelled_items",
    "same_on_every_frame",
    "split_classes",
]


# --- classes and items ---------------------------------------------------------------------------------------
def split_classes(root: Path, split: str, *, classes_file: Path | None = None) -> list[str]:
    """The class names of a labelled data set, in index order, read from its training split.

    ``classes_file``: one name per line (:func:`~anymae.core.data.files.read_classes_file`). Else a ``<split>.csv``
    list (integer labels) has classes ``"0"`` .. ``str(K - 1)`` with K = its largest label + 1, and a
    ``<split>/`` folder the sorted names of its class sub-folders (torchvision ImageFolder's convention).
    """
    if classes_file is not None:
        return read_classes_file(classes_file)
    csv = root / f"{split}.csv"
    if csv.is_file():
        labels = [label for _, label in _read_labelled_csv(csv, root, named=None)]
        return [str(i) for i in range(max(labels) + 1)]
    if not (root / split).is_dir():
        raise DataError(f"labelled split: neither {csv} nor the folder {root / split} exists")
    return class_folders(root / split, at_least=2)


def labelled_items(root: Path, split: str, classes: list[str], *, named: bool = False) -> list[tuple[Path, int]]:
    """``(file, class index)`` of ``split``: ``<split>.csv`` lines ``path label`` (0 <= label < len(classes);
    ``named``: the classes come from a classes file, so labels may also be class names) or the files under
    ``<split>/<class>/`` (every class folder must be one of ``classes``; loose files are ignored)."""
    csv = root / f"{split}.csv"
    if csv.is_file():
        items = _read_labelled_csv(csv, root, named=classes if named else None)
        bad = [(p, label) for p, label in items if label >= len(classes)]
        if bad:
            raise DataError(
                f"{csv}: label {bad[0][1]} of {bad[0][0]} is out of range for {len(classes)} classes "
                "(the training split's, or data.classes_file)"
            )
        return items
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"labelled split: neither {csv} nor the folder {folder} exists")
    # at_least=1: a held-out split may lack some classes
    return class_folder_samples(folder, classes, extensions=VIDEO_EXTENSIONS, at_least=1)


def _read_labelled_csv(csv: Path, root: Path, *, named: Sequence[str] | None) -> list[tuple[Path, int]]:
    """The list's (file, label) lines, every one labelled. ``named``: the class names of a classes file, which
    labels may use (and which bound them); otherwise the classes are numbered by the labels themselves."""
    items = read_list(csv, root, classes=named)
    unlabelled = [p for p, label in items if label is None]
    if unlabelled:
        raise DataError(f"{csv}: {unlabelled[0]} has no integer label (lines 'path label', label >= 0)")
    return items  # type: ignore[return-value]


# --- transforms ----------------------------------------------------------------------------------------------
def same_on_every_frame(transform: Callable[[Image.Image], Tensor], frames: np.ndarray, *, in_chans: int) -> Tensor:
    """uint8 (T, H, W, 3) -> (C, T, h, w): ``transform`` on each frame with the python, numpy and torch (CPU)
    generators restored to the state they had before the first frame, so all random choices repeat exactly.
    Afterwards the generators are as one ``transform`` call left them."""
    mode = "L" if in_chans == 1 else "RGB"
    images = [Image.fromarray(np.ascontiguousarray(frame)).convert(mode) for frame in frames]
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    out = []
    for image in images:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        out.append(transform(image))  # (C, h, w)
    return torch.stack(out, dim=1)  # (C, T, h, w)


def _without_flip(transform: transforms.Compose) -> transforms.Compose:
    """The same pipeline minus its horizontal flips (SSv2 and the motion demo: left/right is the label)."""
    steps = [t for t in transform.transforms if not isinstance(t, transforms.RandomHorizontalFlip)]
    return transforms.Compose(steps)


def clip_transform(
    size: tuple[int, int],
    *,
    augment: Mapping[str, Any],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
) -> Callable[[np.ndarray], Tensor]:
    """The training transform of ``augment["recipe"]`` for whole clips: uint8 (T, H, W, 3) -> (C, T, h, w).

    ``finetune``: the image plugin's timm fine-tuning transform (VideoMAE's ``run_class_finetuning``: random
    resized crop 0.08-1 / 3:4-4:3, flip, RandAugment ``auto_augment``, random erasing ``reprob``).
    ``linprobe``: RandomResizedCrop + flip, MAE's linear-probe augmentation. ``hflip: false`` drops the flip.
    """
    # Imported here: loading the video plugin must not import the image plugin (it can be disabled on its own).
    from anymae.modalities.image.classification import finetune_transform, linprobe_transform

    recipe = augment.get("recipe")
    if recipe == "finetune":
        frame = finetune_transform(size, augment=augment, mean=mean, std=std)
    elif recipe == "linprobe":
        frame = linprobe_transform(size, mean=mean, std=std)
    else:
        raise ValueError(f"augment recipe {recipe!r} is not 'finetune' or 'linprobe'")
    if not hflip:
        frame = _without_flip(frame)
    return partial(same_on_every_frame, frame, in_chans=in_chans)


def eval_transform(
    size: tuple[int, int],
    *,
    crop_pct: float,
    num_crops: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
) -> Callable[[np.ndarray], Tensor]:
    """VideoMAE's test transform: shorter side to ``int(max(size) / crop_pct)`` (its ``short_side_size``: 224 for
    224 crops is ``crop_pct: 1.0``), ``num_crops`` crops along the longer side -> (num_crops, C, T, h, w)."""
    return partial(
        multi_crop_views,
        size=size,
        short_side=int(max(size) / crop_pct),
        num_crops=num_crops,
        mean=mean,
        std=std,
        in_chans=in_chans,
    )


# --- dataset -------------------------------------------------------------------------------------------------
class LabelledVideos(DatasetWithTraits):
    """``(file, label)`` items -> ``(clip, label)``.

    Training (``train=True``): one random clip of ``sampler`` (VideoMAE's fine-tuning samplers, see
    :mod:`.sampling`) through ``transform`` -> (C, T, H, W); with ``num_sample = S > 1`` the decoded clip is
    augmented S times -> (S, C, T, H, W) (VideoMAE's repeated augmentation: ``samples_per_item``, which the core
    folds into the batch with the label repeated). Evaluation: ``num_segments`` fixed clips, each
    through ``transform`` giving (num_crops, C, T, H, W) -> ``num_views = num_segments * num_crops`` views
    (V, C, T, H, W), clip-major, or one (C, T, H, W) when V = 1. A file is decoded once per item. Randomness
    comes from the torch generator, which the core seeds per sample.
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        *,
        classes: Sequence[str],
        transform: Callable[[np.ndarray], Tensor],
        num_frames: int,
        sampling_rate: int,
        sampler: Literal["clip", "segments"],
        train: bool,
        num_segments: int = 1,
        num_crops: int = 1,
        num_sample: int = 1,
    ) -> None:
        if not items:
            raise DataError("no labelled videos given")
        self.items, self.classes = list(items), list(classes)
        self.transform, self.train = transform, train
        self.num_frames, self.sampling_rate, self.sampler = num_frames, sampling_rate, sampler
        self.num_segments = 1 if train else num_segments
        self.num_views = 1 if train else num_segments * num_crops
        self.samples_per_item = num_sample if train else 1

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(
            classes=tuple(self.classes), num_views=self.num_views, samples_per_item=self.samples_per_item
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        kwargs = {"sampler": self.sampler, "num_frames": self.num_frames, "sampling_rate": self.sampling_rate}
        if self.train:
            rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
            clips = read_clips_at(path, partial(train_indices, rng=rng, **kwargs))  # (1, T, H, W, 3)
        else:
            clips = read_clips_at(path, partial(eval_indices, num_segments=self.num_segments, **kwargs))
        try:
            if self.train:
                if self.samples_per_item == 1:
                    return self.transform(clips[0]), label  # (C, T, h, w)
                return torch.stack([self.transform(clips[0]) for _ in range(self.samples_per_item)]), label
            views = torch.cat([self.transform(clip) for clip in clips])  # (V, C, T, h, w)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BadSampleError(f"video {path}: cannot transform its frames {clips.shape[1:]}: {exc}") from None
        return (views[0] if self.num_views == 1 else views), label
