"""Image files for pre-training: ImageFolder-style trees (or flat folders) and the paper's transforms.

Two ways in, chosen per file by :class:`ImageReader`:

- **8-bit photographs** (JPEG, 8-bit PNG, BMP, WebP, PPM/PGM) with ``model.tokenizer.in_chans`` 1 or 3 and no
  ``data.bands`` / ``data.value_range``: PIL decodes them to grey or RGB and the transforms run on PIL images,
  exactly as the reference code does.
- **everything else is read at its stored precision** as bands ``(C, H, W)``, scaled to float32 and
  augmented as a tensor (no band is dropped, nothing is quantised to 8 bits):

  - TIFF / GeoTIFF (``tifffile``), every band: axes ``YX`` (one band), ``SYX`` / ``CYX`` / ``QYX`` (bands
    first: planar samples, channels or pages) or ``YXS`` (bands last: interleaved samples);
  - ``.npy`` and ``.npz`` arrays: ``(H, W)`` is one band, 3-D arrays are ``(C, H, W)`` (PyTorch's order) or,
    with ``data.array_layout: HWC``, ``(H, W, C)``; an ``.npz`` holds one array, or names it ``image``;
  - 16-bit PNG (grey, grey + alpha, RGB, RGBA: every stored channel is a band);
  - 8-bit files when the data asks for bands (``in_chans`` other than 1 and 3, ``data.bands``, or
    ``data.value_range``): their PIL bands (a palette image as RGB, or RGBA with transparency).

  Scaling to float: ``data.value_range: [lo, hi]`` maps ``lo -> 0`` and ``hi -> 1`` for any type; without it
  integers are divided by their type's range (``uint8`` / 255, ``uint16`` / 65535; signed types map their
  minimum to 0 and maximum to 1) and floats are kept as stored. ``data.bands`` then selects bands by index,
  in the given order. A file whose band count is not ``in_chans`` is a bad sample (:class:`BadSampleError`
  naming the file, its band count and the expected one): counted and replaced, like an unreadable file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_png
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tf

from anymae.core.data.files import find_files
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

__all__ = [
    "ARRAY_EXTENSIONS",
    "BUILTIN_DEMO_ROOT",
    "IMAGE_EXTENSIONS",
    "AsTensor",
    "ImageFiles",
    "ImageReader",
    "demo_photos_root",
    "eval_transform",
    "find_images",
    "full_precision_format",
    "high_bit_mode",
    "load_image",
    "pretrain_transform",
    "read_bands",
    "scale_values",
]

TIFF_EXTENSIONS = (".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")  # 8-bit by definition: read from bytes with no precision check
ARRAY_EXTENSIONS = (".npy", ".npz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", *TIFF_EXTENSIONS, ".ppm", ".pgm", *ARRAY_EXTENSIONS)
BUILTIN_DEMO_ROOT = "builtin:demo_photos"  # the photographs shipped inside the package (demo_photos/)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPZ_IMAGE_KEY = "image"  # the array of an .npz that holds several


def demo_photos_root() -> Path:
    """The photographs shipped inside the package (``data.root: builtin:demo_photos``)."""
    return Path(__file__).parent / "demo_photos"


def find_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (class sub-folders or flat), sorted for a deterministic order."""
    return find_files(folder, IMAGE_EXTENSIONS)


def load_image(path: Path, in_chans: int, raw: bytes | None = None) -> Image.Image:
    """Decode one file (or its bytes ``raw``, named ``path``) to RGB (3 channels) or L (1 channel); a file PIL
    cannot read raises BadSampleError."""
    try:
        with Image.open(path if raw is None else io.BytesIO(raw)) as im:
            return im.convert("RGB" if in_chans == 3 else "L")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSampleError(f"cannot read image {path}: {exc}") from None


def high_bit_mode(mode: str) -> bool:
    """Whether a PIL mode holds more than 8 bits per channel (``I``, ``I;16``..., ``F``)."""
    return mode.startswith("I") or mode == "F"


def full_precision_format(path: Path) -> str | None:
    """What makes ``path`` a file to read at its stored precision ("a TIFF", "a 16-bit PNG", ...), from its
    name and, for PNG, its header; ``None`` for the formats PIL decodes to 8 bits."""
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return "a TIFF"
    if suffix in ARRAY_EXTENSIONS:
        return f"a NumPy {suffix} array"
    if suffix == ".png":
        try:
            with open(path, "rb") as f:
                header = f.read(25)
        except OSError as exc:
            raise BadSampleError(f"cannot read image {path}: {exc}") from None
        # IHDR is the first chunk: 8-byte signature, length, b"IHDR", width, height, then the bit depth.
        if header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR" and len(header) == 25 and header[24] == 16:
            return "a 16-bit PNG"
    return None


def read_bands(path: Path, *, array_layout: str = "CHW") -> np.ndarray:
    """One file as its stored bands ``(C, H, W)`` in the stored dtype (see the module docstring for the axis
    conventions); a file that cannot be read that way raises :class:`BadSampleError` naming it."""
    suffix = path.suffix.lower()
    if suffix in TIFF_EXTENSIONS:
        return _read_tiff(path)
    if suffix in ARRAY_EXTENSIONS:
        return _read_array(path, array_layout)
    if full_precision_format(path) is not None:  # 16-bit PNG: PIL would keep 8 of the 16 bits of RGB
        try:
            return decode_png(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.UNCHANGED).numpy()
        except (OSError, RuntimeError, ValueError) as exc:
            raise BadSampleError(f"cannot read image {path}: {exc}") from None
    return _read_pil_bands(path)


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as exc:
        raise BadSampleError(f"cannot read TIFF {path}: {exc}") from None
    shape = array.shape
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or shape[i] != 1]  # drop length-1 axes
    array, axes = array.reshape([shape[i] for i in keep]), "".join(axes[i] for i in keep)
    if axes == "YX":
        return array[None]  # (1, H, W)
    if len(axes) == 3 and axes.endswith("YX"):  # SYX planar samples, CYX channels, QYX/IYX pages: bands first
        return array
    if axes == "YXS":  # interleaved samples (RGB, or a GeoTIFF written pixel by pixel): bands last
        return array.transpose(2, 0, 1)  # (C, H, W)
    raise BadSampleError(
        f"TIFF {path} has axes {axes} of shape {tuple(shape)}: expected bands of one image, YX, SYX/CYX/QYX "
        "(bands first) or YXS (bands last)"
    )


def _read_array(path: Path, layout: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if NPZ_IMAGE_KEY not in names and len(names) != 1:
                    raise BadSampleError(
                        f"{path} holds arrays {names}: store one array, or name the image {NPZ_IMAGE_KEY!r}"
                    )
                array = archive[NPZ_IMAGE_KEY if NPZ_IMAGE_KEY in names else names[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadSampleError(f"cannot read array {path}: {exc}") from None
    if array.dtype.kind not in "buif":
        raise BadSampleError(f"array {path} has dtype {array.dtype}: expected booleans, integers or floats")
    if array.ndim == 2:
        return array[None]  # (1, H, W)
    if array.ndim == 3:
        return array if layout == "CHW" else array.transpose(2, 0, 1)  # (C, H, W)
    raise BadSampleError(
        f"array {path} has shape {array.shape}: expected (H, W) or a 3-D image ({layout}, data.array_layout)"
    )


def _read_pil_bands(path: Path) -> np.ndarray:
    """A PIL-readable file as its bands; palette images become RGB (RGBA with transparency), 1-bit L."""
    try:
        with Image.open(path) as im:
            if high_bit_mode(im.mode):  # e.g. a 16-bit PGM: PIL does not say its maximum value
                raise BadSampleError(
                    f"{path} is a {im.format} image of mode {im.mode}: read at full precision only from TIFF, "
                    "16-bit PNG or .npy/.npz (convert it), or as 8 bits"
                )
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV
                im = im.convert("RGB")
            array = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSampleError(f"cannot read image {path}: {exc}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def scale_values(array: np.ndarray, value_range: tuple[float, float] | None = None) -> Tensor:
    """Stored values -> float32 tensor: ``value_range`` (lo, hi) maps lo to 0 and hi to 1; without it integers
    are divided by their type's range (signed: minimum -> 0, maximum -> 1) and floats kept as stored."""
    if value_range is not None:
        lo, hi = value_range
    elif array.dtype.kind == "b":
        lo, hi = 0, 1
    elif array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        lo, hi = info.min, info.max
    else:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    # float32 arithmetic: exactly rounded for 8- and 16-bit integers (v / 65535 is the nearest float32).
    x = np.subtract(array, np.float32(lo), dtype=np.float32)
    return torch.from_numpy(np.divide(x, np.float32(hi - lo), dtype=np.float32))


@dataclass(frozen=True)
class ImageReader:
    """A file -> a PIL image (8-bit photographs) or a float32 tensor ``(in_chans, H, W)`` of scaled bands:
    the ``data`` keys ``bands``, ``value_range`` and ``array_layout`` (see the module docstring)."""

    in_chans: int
    bands: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None
    array_layout: str = "CHW"

    @property
    def photographs(self) -> bool:
        """Whether 8-bit files take the PIL path (grey or RGB, as the reference code reads them)."""
        return self.in_chans in (1, 3) and self.bands is None and self.value_range is None

    def __call__(self, path: Path) -> Image.Image | Tensor:
        if self.photographs and full_precision_format(path) is None:
            try:
                with Image.open(path) as im:
                    if not high_bit_mode(im.mode):
                        return im.convert("RGB" if self.in_chans == 3 else "L")
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
                raise BadSampleError(f"cannot read image {path}: {exc}") from None
        return scale_values(self.select(path, read_bands(path, array_layout=self.array_layout)), self.value_range)

    def from_bytes(self, raw: bytes, name: Path) -> Image.Image | None:
        """A JPEG's bytes (named ``name``) -> the PIL image ``self(path)`` gives for its file; None for other files
        (their precision is read from the file)."""
        if not self.photographs or name.suffix.lower() not in JPEG_EXTENSIONS:
            return None
        return load_image(name, self.in_chans, raw)  # 8 bits: JPEG has no other depth PIL reads

    def select(self, path: Path, array: np.ndarray) -> np.ndarray:
        """``data.bands`` of ``array`` (C, H, W), checked against ``in_chans``."""
        count = array.shape[0]
        if self.bands is not None:
            if max(self.bands) >= count:
                raise BadSampleError(
                    f"{path} has {count} bands, but data.bands asks for band {max(self.bands)} (counting from 0)"
                )
            array = array[list(self.bands)]
        elif count != self.in_chans:
            raise BadSampleError(f"{path} has {count} bands, expected {self.in_chans} (model.tokenizer.in_chans)")
        return array


class AsTensor:
    """``transforms.ToTensor`` for PIL images (8 bits / 255); a tensor, already scaled by
    :class:`ImageReader`, passes through, so one transform serves both kinds of input."""

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        return image if isinstance(image, Tensor) else tf.to_tensor(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def pretrain_transform(
    size: tuple[int, int],
    *,
    scale: tuple[float, float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> transforms.Compose:
    """The paper's pre-training augmentation: RandomResizedCrop(scale=(0.2, 1), bicubic) + flip + normalize,
    on PIL images or on float tensors of any band count (antialiased bicubic, nothing quantised)."""
    steps = [transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [AsTensor(), transforms.Normalize(mean, std)]
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
            AsTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class RepeatedFiles(DatasetWithTraits):
    """Files listed ``repeats`` times per epoch: item ``i`` reads ``files[i % len(files)]`` (each repeat with its
    own random crop), which keeps tiny datasets from ending an epoch every step. The base of every image
    pre-training dataset."""

    def __init__(self, files: Sequence[Path], *, repeats: int = 1) -> None:
        if not files:
            raise DataError("no image files given")
        self.files, self.repeats = list(files), repeats

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(source=self.source, from_bytes=self.from_bytes)

    def source(self, index: int) -> Path:
        """The file item ``index`` is read from."""
        return self.files[index % len(self.files)]

    def from_bytes(self, raw: bytes, name: Path) -> list[Any] | None:
        """The ``len(self)`` items of one file holding ``raw`` (a shard sample), decoded in memory; None (here:
        always) when the file must be read from disk."""
        return None


class ImageFiles(RepeatedFiles):
    """Image files -> normalized tensors (C, H, W) through a PIL ``transform``."""

    def __init__(
        self, files: Sequence[Path], *, transform: transforms.Compose, reader: ImageReader, repeats: int = 1
    ) -> None:
        super().__init__(files, repeats=repeats)
        self.transform = transform
        self.reader = reader

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.reader(self.files[index % len(self.files)]))

    def from_bytes(self, raw: bytes, name: Path) -> list[torch.Tensor] | None:
        """The ``len(self)`` items of one JPEG holding ``raw`` (a shard sample); None for other files."""
        image = self.reader.from_bytes(raw, name)
        return None if image is None else [self.transform(image) for _ in range(self.repeats)]
