"""Benchmark data: JPEG files written on the fly, and the GPU-decoding pipeline (``decode_jpeg(device="cuda")``).

The files stand in for ImageNet photographs (about 500x375, quality 90, smooth content with texture), so
decoding costs what it costs on real data; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

__all__ = ["GpuJpegAugment", "JpegBytes", "write_jpegs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_jpegs(folder: Path, count: int, *, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
    """``count`` photographs-like JPEGs in ``folder/train/all/`` (an ImageFolder layout); returns the paths."""
    out = folder / "train" / "all"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    gx, gy = np.linspace(0, 1, w)[None, :, None], np.linspace(0, 1, h)[:, None, None]
    paths = []
    for i in range(count):
        base = rng.uniform(0.2, 0.8, size=(1, 1, 3))
        texture = rng.normal(0, 0.06, size=(h, w, 3))
        array = np.clip(0.5 * base + 0.3 * gx + 0.2 * gy + texture, 0, 1)
        image = Image.fromarray((255 * array).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            draw.ellipse((x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))), fill=fill)
        path = out / f"img{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


class JpegBytes(Dataset):
    """The undecoded file bytes as a uint8 tensor: decoding and augmentation happen on the GPU, per batch."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        return read_file(str(self.files[index]))


def collate_bytes(items: list[Tensor]) -> list[Tensor]:
    return items


class GpuJpegAugment:
    """A batch of JPEG byte tensors -> (N, 3, S, S) normalized float on ``device``: nvJPEG decode, then the
    paper's RandomResizedCrop(scale=(0.2, 1), bicubic) + horizontal flip + ImageNet normalization per image."""

    def __init__(
        self,
        *,
        size: int,
        device: torch.device,
        scale: tuple[float, float] = (0.2, 1.0),
        generator: torch.Generator | None = None,
    ) -> None:
        self.size, self.device, self.scale = size, device, scale
        self.generator = generator or torch.Generator().manual_seed(0)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: list[Tensor]) -> Tensor:
        images = decode_jpeg(batch, device=self.device)  # list of (3, H, W) uint8
        crops = []
        for img in images:
            top, left, h, w = RandomResizedCrop.get_params(img, scale=list(self.scale), ratio=[3 / 4, 4 / 3])
            crop = tvf.resized_crop(
                img, top, left, h, w, [self.size, self.size], interpolation=InterpolationMode.BICUBIC, antialias=True
            )
            if torch.rand((), generator=self.generator) < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        x = torch.stack(crops).float().div_(255)  # (N, 3, S, S)
        return (x - self.mean) / self.std
