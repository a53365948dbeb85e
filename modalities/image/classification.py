"""Labelled images (ImageFolder: ``split/<class>/*.jpg``) with the reference fine-tuning, linear-probing
and evaluation transforms (reference section 2).

Linear probing and evaluation run one transform on PIL images and on the float tensors of full-precision
files (:class:`~anymae.modalities.image.data.ImageReader`). Fine-tuning uses timm's pipeline for PIL images;
on tensors the same crop (scale 0.08-1, ratio 3/4-4/3, bicubic), flip and random erasing, without
RandAugment, whose colour operations exist for 8-bit images only: a tensor with ``finetune.auto_augment``
set is refused (a bad sample naming the file and the key)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

from .data import AsTensor, ImageReader

__all__ = [
    "LabelledImages",
    "PilOrTensor",
    "classification_eval_transform",
    "finetune_tensor_transform",
    "finetune_transform",
    "linprobe_transform",
]


def finetune_transform(
    size: tuple[int, int],
    *,
    augment: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
):
    """timm's ``create_transform`` as the official fine-tuning: RandomResizedCrop (bicubic) + flip (unless
    ``hflip`` is False) + RandAugment (``auto_augment``) + normalize + random erasing (``reprob``, ``remode``,
    ``recount``)."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=size,
        is_training=True,
        color_jitter=None,  # the official fine-tuning passes None: RandAugment replaces colour jitter
        auto_augment=augment.get("auto_augment"),
        interpolation="bicubic",
        scale=tuple(scale),
        hflip=0.5 if hflip else 0.0,
        re_prob=augment.get("reprob", 0.0),
        re_mode=augment.get("remode", "pixel"),
        re_count=augment.get("recount", 1),
        mean=tuple(mean),
        std=tuple(std),
    )
    return _posterize_zero_bits_as_black(transform)


def _posterize_zero_bits_as_black(transform: transforms.Compose) -> transforms.Compose:
    """timm's ``PosterizeIncreasing`` keeps 0 bits at magnitude 10 (reached by m9 + mstd noise); Pillow >= 10
    refuses 0 bits (``ValueError: bits must be between or equal to 1 and 8``) where older Pillow, which the
    reference ran on, returned a black image. Without this, ~0.15% of samples would fail to load."""
    from timm.data.auto_augment import RandAugment

    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # every bit masked off: black, as Pillow < 10 did
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def finetune_tensor_transform(
    size: tuple[int, int],
    *,
    augment: Mapping[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
) -> Any:
    """:func:`finetune_transform` for float tensors ``(C, H, W)`` of any band count: timm's training crop
    (RandomResizedCrop scale 0.08-1, ratio 3/4-4/3, bicubic) + flip + normalize + random erasing."""
    from timm.data.random_erasing import RandomErasing

    if augment.get("auto_augment"):
        return _RefuseAutoAugment(augment["auto_augment"])
    steps = [
        transforms.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(0.5 if hflip else 0.0),
        transforms.Normalize(mean, std),
    ]
    if augment.get("reprob", 0.0) > 0:
        mode, count = augment.get("remode", "pixel"), augment.get("recount", 1)
        steps.append(RandomErasing(augment["reprob"], mode=mode, max_count=count, device="cpu"))
    return transforms.Compose(steps)


@dataclass(frozen=True)
class _RefuseAutoAugment:
    spec: str

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        raise BadSampleError(
            f"finetune.auto_augment={self.spec!r}: RandAugment works on 8-bit grey or RGB images, and this image "
            "is read at full precision (16-bit, multi-band or an array); set finetune.auto_augment=null"
        )


@dataclass(frozen=True)
class PilOrTensor:
    """One transform for 8-bit PIL images and another for the float tensors of full-precision files."""

    pil: Any
    tensor: Any

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.pil(image) if isinstance(image, Image.Image) else self.tensor(image)


def linprobe_transform(
    size: tuple[int, int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
) -> transforms.Compose:
    """The official linear probe's training transform: RandomResizedCrop (default scale 0.08-1, bicubic) + flip
    (unless ``hflip`` is False) (PIL images or float tensors)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(0.5 if hflip else 0.0),
            AsTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def classification_eval_transform(
    size: tuple[int, int], *, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875
) -> transforms.Compose:
    """Resize the shorter side to size / crop_pct (256 for 224, bicubic), centre crop, normalize (PIL images or
    float tensors)."""
    return transforms.Compose(
        [
            transforms.Resize(int(max(size) / crop_pct), interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            AsTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class LabelledImages(DatasetWithTraits):
    """``(file, class index)`` samples -> ``(image (C, H, W), class index)``; ``classes`` names the indices
    (the same list for every split): class folders or a file list (``data.train_list``), read with
    :mod:`anymae.core.data.files`."""

    def __init__(
        self, samples: Sequence[tuple[Path, int]], *, transform: Any, reader: ImageReader, classes: Sequence[str]
    ) -> None:
        if not samples:
            raise DataError("no labelled image files given")
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.reader = reader

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(classes=tuple(self.classes), from_bytes=self.from_bytes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self._item(self.reader(path), path, label)

    def from_bytes(self, raw: bytes, name: Path) -> list[tuple[torch.Tensor, int]] | None:
        """The items of a one-sample set whose file holds ``raw`` (a shard sample, JPEGs), with that sample's label;
        None for other files."""
        image = self.reader.from_bytes(raw, name)
        if image is None or len(self.samples) != 1:
            return None
        return [self._item(image, name, self.samples[0][1])]

    def _item(self, image: Any, path: Path, label: int) -> tuple[torch.Tensor, int]:
        try:
            return self.transform(image), label
        except BadSampleError as exc:  # a transform's refusal (e.g. RandAugment on 16 bits): name the file
            raise BadSampleError(f"{path}: {exc}") from None
