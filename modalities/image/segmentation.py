"""Images with per-pixel class masks, and mmseg's training pipeline applied to both together.

Two ways to name the pairs:

- **the ADE20K layout**: ``images/<split>/*`` and ``annotations/<split>/*``, an image paired with the mask of the
  same path below the split without its suffix (``images/training/a/x.jpg`` with ``annotations/training/a/x.png``);
  images are any file the image plugin reads (JPEG, PNG, N-band TIFF, ``.npy``...), masks PNG, TIFF or ``.npy``;
- **a list file**: one ``image-path mask-path`` pair per line, relative to the data root (``#`` comments).

A mask holds one class index per pixel (8- or 16-bit grey or palette PNG: the stored index; a one-band TIFF or
array). ``reduce_zero_label`` (ADE20K: 0 is "other") makes 0 the ignored label and 1..K class 0..K-1 (mmseg's
``LoadAnnotations(reduce_zero_label=True)``). An image with no mask, a mask whose size is not its image's, a class
index >= ``num_classes`` other than ``ignore_index``, or a file that cannot be read is a :class:`BadSampleError`
naming the file: :class:`~anymae.core.data.samples.SafeDataset` counts it and loads another sample, so a wrong
label can never enter the mIoU silently.

Training augmentation is mmseg's ADE20K pipeline (``configs/_base_/datasets/ade20k.py``: Resize with
``ratio_range`` 0.5-2.0, RandomCrop with ``cat_max_ratio`` 0.75, RandomFlip 0.5, PhotoMetricDistortion, Normalize,
Pad with the mask padded by ``ignore_index``), written with torchvision.transforms.v2 on an ``Image`` and a
``Mask`` so that every geometric step moves both (the mask resized by nearest neighbour).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as tvf

from anymae.core.data.files import find_files
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

from .data import ImageReader, find_images, read_bands

__all__ = [
    "MASK_EXTENSIONS",
    "PadTo",
    "RandomCropCatMax",
    "RandomRescale",
    "SegmentationFiles",
    "ade20k_pairs",
    "eval_transform",
    "read_mask",
    "read_pair_list",
    "train_transform",
]

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
Pair = tuple[Path, Path | None]  # (image, its mask or None when none was found)


# --- finding the pairs ---------------------------------------------------------------------------------------
def ade20k_pairs(root: Path, split: str) -> list[Pair]:
    """``root/images/<split>`` paired by relative path stem with ``root/annotations/<split>``; an image without a
    mask is kept with ``None`` (a bad sample when read). Fails when the split has no images."""
    image_dir, mask_dir = root / "images" / split, root / "annotations" / split
    if not image_dir.is_dir():
        raise DataError(f"segmentation data: folder {image_dir} does not exist (ADE20K layout: images/{split}/)")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in find_files(mask_dir, MASK_EXTENSIONS)}
    pairs = [(image, masks.get(image.relative_to(image_dir).with_suffix(""))) for image in find_images(image_dir)]
    if not pairs:
        raise DataError(f"no images in {image_dir}")
    return pairs


def read_pair_list(list_file: Path, root: Path) -> list[Pair]:
    """A list file of ``image-path mask-path`` lines (relative to ``root`` unless absolute; blank lines and ``#``
    comments skipped) -> pairs in list order; every listed file must exist (checked at start-up)."""
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {list_file}: {exc}") from None
    pairs: list[Pair] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{list_file}, line {number}: expected 'image-path mask-path', got {line!r}")
        image, mask = (root / Path(f).expanduser() for f in fields)
        for what, path in (("image", image), ("mask", mask)):
            if not path.is_file():
                raise DataError(f"{list_file}, line {number}: {what} file {path} does not exist")
        pairs.append((image, mask))
    if not pairs:
        raise DataError(f"{list_file} lists no pairs (one 'image-path mask-path' per line)")
    return pairs


# --- reading ---------------------------------------------------------------------------------------------------
def read_mask(path: Path) -> np.ndarray:
    """A mask file -> (H, W) int64 class indices: a grey or palette PNG's stored values (8 or 16 bits), a one-band
    TIFF or ``.npy``; anything else raises :class:`BadSampleError` naming the file."""
    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise BadSampleError(f"mask {path} is a {im.mode} image: expected one band of class indices")
                array = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise BadSampleError(f"cannot read mask {path}: {exc}") from None
    else:
        bands = read_bands(path)
        if bands.shape[0] != 1:
            raise BadSampleError(f"mask {path} has {bands.shape[0]} bands: expected one band of class indices")
        array = bands[0]
    if array.dtype.kind not in "bui":
        raise BadSampleError(f"mask {path} holds {array.dtype} values: expected integer class indices")
    return array.astype(np.int64)


class SegmentationFiles(DatasetWithTraits):
    """(image, mask) pairs -> ``(image (C, H, W) float32, mask (H, W) int64)`` through ``transform``, which gets a
    ``tv_tensors.Image`` (floats in [0, 1], or the reader's scaled bands) and a ``tv_tensors.Mask``."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        reader: ImageReader,
        transform: v2.Transform,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
    ) -> None:
        if not pairs:
            raise DataError("no image-mask pairs given")
        if 0 <= ignore_index < num_classes:
            raise DataError(f"ignore_index {ignore_index} is one of the {num_classes} classes (0..{num_classes - 1})")
        self.pairs, self.reader, self.transform = list(pairs), reader, transform
        self.num_classes, self.ignore_index, self.reduce_zero_label = num_classes, ignore_index, reduce_zero_label

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(source=self.source)

    def source(self, index: int) -> Path:
        """The image file item ``index`` is read from."""
        return self.pairs[index][0]

    def labels(self, image_path: Path, mask_path: Path | None) -> np.ndarray:
        """The mask of ``image_path`` as class indices 0..K-1 or ``ignore_index``, checked."""
        if mask_path is None:
            raise BadSampleError(f"image {image_path} has no mask (paired by file name without its suffix)")
        mask = read_mask(mask_path)
        if self.reduce_zero_label:  # 0 ("other") -> ignored, 1..K -> 0..K-1
            mask = np.where(mask == 0, self.ignore_index, mask - 1)
        bad = (mask >= self.num_classes) & (mask != self.ignore_index) | (mask < 0)
        if bad.any():
            values = np.unique(mask[bad])[:10].tolist()
            shift = " after reduce_zero_label" if self.reduce_zero_label else ""
            raise BadSampleError(
                f"mask {mask_path} has class indices {values}{shift} outside 0..{self.num_classes - 1} "
                f"(data.num_classes {self.num_classes}, ignore_index {self.ignore_index})"
            )
        return mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        mask = self.labels(image_path, mask_path)
        image = self.reader(image_path)
        pixels = (
            tvf.to_dtype(tvf.to_image(image), torch.float32, scale=True) if isinstance(image, Image.Image) else image
        )
        if tuple(pixels.shape[-2:]) != mask.shape:
            raise BadSampleError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but image {image_path} is "
                f"{pixels.shape[-2]}x{pixels.shape[-1]} (H x W)"
            )
        out_image, out_mask = self.transform(tv_tensors.Image(pixels), tv_tensors.Mask(torch.from_numpy(mask)))
        return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor)


# --- transforms ------------------------------------------------------------------------------------------------
class RandomRescale(v2.Transform):
    """mmseg ``Resize(img_scale=scale, ratio_range=ratios, keep_ratio=True)``: draw r in ``ratios``, then resize so
    that the long side is at most ``scale[0] * r`` and the short side at most ``scale[1] * r``, keeping the aspect
    ratio (images bilinear, masks nearest)."""

    def __init__(self, scale: tuple[int, int], ratios: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.scale, self.ratios = scale, ratios

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        r = random.uniform(*self.ratios)
        factor = min(self.scale[0] * r / max(h, w), self.scale[1] * r / min(h, w))
        return {"size": [max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tvf.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


class RandomCropCatMax(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random window of at most ``size``; up to 10 draws are made
    until one whose most frequent class (ignored pixels aside) covers less than ``cat_max_ratio`` of it and that
    holds more than one class, else the last draw is kept."""

    def __init__(self, size: tuple[int, int], *, cat_max_ratio: float = 0.75, ignore_index: int = 255) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        for _ in range(10):
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            if self.cat_max_ratio >= 1 or not masks:
                break
            window = masks[0][..., top : top + ch, left : left + cw]
            _, counts = window[window != self.ignore_index].unique(return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tvf.crop(inpt, **params)


class PadTo(v2.Transform):
    """Pad at the bottom and right to at least ``size``: images with 0 (after normalisation, as mmseg's ``Pad``
    follows ``Normalize``), masks with ``ignore_index`` so padding never counts."""

    def __init__(self, size: tuple[int, int], *, ignore_index: int = 255) -> None:
        super().__init__()
        self.size, self.ignore_index = size, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return tvf.pad(inpt, params["padding"], fill=fill)


def train_transform(
    crop: tuple[int, int],
    *,
    scale: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    ratios: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    hflip: bool = True,
    photometric: bool = True,
    ignore_index: int = 255,
) -> v2.Compose:
    """mmseg's ADE20K training pipeline for an (Image, Mask) pair (``scale`` (2048, 512) and ``crop`` 512 there).

    ``photometric``: torchvision's ``RandomPhotometricDistort``, SSD's distortion as mmseg's ``PhotoMetricDistortion``
    (brightness, contrast 0.5-1.5, saturation 0.5-1.5, hue +-18 degrees, each with probability 0.5), on the image
    only; it needs RGB images (``len(mean)`` 3)."""
    if photometric and len(mean) != 3:
        raise ValueError(f"photometric distortion needs RGB images (3 channels), these have {len(mean)}")
    steps: list[v2.Transform] = [
        RandomRescale(scale, ratios),
        RandomCropCatMax(crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if photometric:
        steps.append(v2.RandomPhotometricDistort())
    steps += [v2.Normalize(mean, std), PadTo(crop, ignore_index=ignore_index)]
    return v2.Compose(steps)


def eval_transform(*, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Held-out pairs at full resolution: the image normalised, the mask as stored (sliding-window inference
    covers any size)."""
    return v2.Compose([v2.Normalize(mean, std)])
