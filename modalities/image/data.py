"""Image files for pre-training: ImageFolder-style trees (or flat folders) and the paper's transforms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from anymae.core.data import BadSampleError, DataError

__all__ = [
    "BUILTIN_DEMO_ROOT",
    "IMAGE_EXTENSIONS",
    "ImageFiles",
    "eval_transform",
    "find_images",
    "load_image",
    "pretrain_transform",
    "resolve_root",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
BUILTIN_DEMO_ROOT = "builtin:demo_photos"  # the photographs shipped inside the package (demo_photos/)


def resolve_root(root: str) -> Path:
    """``builtin:demo_photos`` -> the packaged folder; anything else is a filesystem path."""
    if root == BUILTIN_DEMO_ROOT:
        return Path(__file__).parent / "demo_photos"
    return Path(root).expanduser()


def find_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (class sub-folders or flat), sorted for a deterministic order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_image(path: Path, in_chans: int) -> Image.Image:
    """Decode one file to RGB (3 channels) or L (1 channel); a file PIL cannot read raises BadSampleError."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB" if in_chans == 3 else "L")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSampleError(f"cannot read image {path}: {exc}") from None


def pretrain_transform(
    size: tuple[int, int],
    *,
    scale: tuple[float, float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> transforms.Compose:
    """The paper's pre-training augmentation: RandomResizedCrop(scale=(0.2, 1), bicubic) + flip + normalize."""
    steps = [transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def eval_transform(
    size: tuple[int, int], *, mean: Sequence[float], std: Sequence[float], zoom: float = 1.0
) -> transforms.Compose:
    """The reference evaluation transform: shorter side to size/0.875 (bicubic), centre crop, normalize.
    ``zoom`` > 1 resizes further first, giving a closer centre crop (extra held-out views)."""
    return transforms.Compose(
        [
            transforms.Resize(int(max(size) / 0.875 * zoom), interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class ImageFiles(Dataset):
    """Image files -> normalized tensors (C, H, W); ``repeats`` > 1 lists every file that many times
    per epoch (each with its own random crop), which keeps tiny datasets from ending an epoch every step."""

    def __init__(self, files: Sequence[Path], *, transform: transforms.Compose, in_chans: int, repeats: int = 1):
        if not files:
            raise DataError("no image files given")
        self.files = list(files)
        self.transform = transform
        self.in_chans = in_chans
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.files[index % len(self.files)], self.in_chans))
