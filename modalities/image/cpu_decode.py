"""``data.decode: cpu`` (the default): JPEGs decoded by ``torchvision.io.decode_jpeg`` and augmented on uint8
tensors in the DataLoader workers.

The paper's pre-training augmentation (RandomResizedCrop with scale 0.2-1, bicubic; a horizontal flip;
normalization) runs with the same box and flip as ``data.decode: pil`` for the same seed: the box comes from
the same ``RandomResizedCrop.get_params`` call on the image's size (read from the header, no decoding) and the
flip from the same ``torch.rand(1) < 0.5`` draw. What differs is pixel-level only: libjpeg-turbo through
torchvision instead of PIL's build of it, and PyTorch's antialiased bicubic resize of uint8 tensors (PIL's
algorithm, rounded to uint8 like PIL's) instead of PIL's own. Measured on the demo photographs: a mean absolute
difference of 0.0001-0.004 levels of 255 per crop (``tests/test_image_cpu_decode.py``); the rate is in
``benchmarks/RESULTS.md``.

Files that are not RGB or greyscale JPEGs (PNG, CMYK JPEG, a truncated JPEG, full-precision files) take the PIL
path of ``data.decode: pil`` for that file, with the box and flip already drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from .data import JPEG_EXTENSIONS, ImageReader, load_image, pretrain_transform
from .device_decode import CropDrawingFiles, is_plain_jpeg, read_header

__all__ = ["TensorDecodedImages"]


class TensorDecodedImages(CropDrawingFiles):
    """Image files -> normalized (C, H, W) float tensors through ``decode_jpeg`` and uint8 tensor transforms.
    Non-JPEG and full-precision files go through ``reader`` and the PIL path's ``pretrain_transform``."""

    def __init__(
        self, files: Sequence[Path], *, mean: Sequence[float], std: Sequence[float], reader: ImageReader, **crops: Any
    ) -> None:
        super().__init__(files, **crops)
        self.reader = reader
        self.fallback = pretrain_transform(
            tuple(self.size), scale=self.crop.scale, hflip=self.hflip, mean=mean, std=std
        )
        self.mode = ImageReadMode.RGB if reader.in_chans == 3 else ImageReadMode.GRAY
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # (C, 1, 1): uint8 -> normalized in one multiply-add
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __getitem__(self, index: int) -> Tensor:
        path = self.files[index % len(self.files)]
        if not self._decodes(path):
            return self.fallback(self.reader(path))
        item = self._decode(path.read_bytes(), path)
        return item if item is not None else self.fallback(self.reader(path))

    def from_bytes(self, raw: bytes, name: Path) -> list[Tensor] | None:
        """The ``len(self)`` items of one file holding ``raw`` (a shard sample), for plain JPEGs; None for a file
        the PIL path reads."""
        first = self._decode(raw, name) if self._decodes(name) else None
        if first is None:
            return None
        return [first] + [self._decode(raw, name) for _ in range(self.repeats - 1)]  # type: ignore[list-item]

    def _decodes(self, path: Path) -> bool:
        return self.reader.photographs and path.suffix.lower() in JPEG_EXTENSIONS

    def _decode(self, raw: bytes, path: Path) -> Tensor | None:
        """A JPEG file's bytes -> the cropped, normalized tensor; None when PIL decides (CMYK, truncated, not a
        JPEG after all), before any random draw."""
        header = read_header(raw, path)  # a file PIL cannot identify is a bad sample, as on the PIL path
        if not is_plain_jpeg(header, raw):
            return None
        (top, left, height, width), flip = self.draw(header)
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=self.mode)  # (C, H, W)
        except RuntimeError:  # damage libjpeg-turbo refuses: PIL's decoder decides, with the same box and flip
            image = tvf.pil_to_tensor(load_image(path, self.reader.in_chans, raw))
        crop = tvf.resized_crop(
            image, top, left, height, width, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True
        )  # (C, h, w) uint8
        if flip:
            crop = crop.flip(-1)
        return crop.float().mul_(self.scale).add_(self.shift)
