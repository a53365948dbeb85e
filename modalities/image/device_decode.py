"""``data.decode: gpu``: training images decoded and augmented by the training device, a batch at a time.

For models whose data pipeline the CPUs cannot feed, the work is split:

- **workers** (:class:`EncodedImageFiles`): read each file's bytes and its size from the header (PIL, no
  decoding), and draw the sample's RandomResizedCrop box and flip with the same torch calls as the CPU
  transform, under the per-sample seed of ``SafeDataset``: a run is reproducible, and its boxes are the boxes
  ``data.decode: cpu`` would crop;
- **collate** (:meth:`DeviceDecode.collate`, in the worker): all bytes of the batch in one flat uint8 tensor;
- **the training process** (:meth:`DeviceDecode.__call__`): ``torchvision.io.decode_jpeg(list, device=...)``
  decodes the batch (nvJPEG on CUDA), then each image is cropped, resized (bicubic, antialiased), flipped, and
  the batch is normalized, with ``torchvision.transforms.v2.functional`` on tensors.

Files that are not RGB or greyscale JPEGs (PNG, CMYK JPEG, ...) are decoded in the worker by PIL, as the CPU
path does, and travel as pixels; their crop still runs on the device, so one interpolation serves the batch.

Only 8-bit images take this path: a config that reads bands at full precision (``in_chans`` other than 1
and 3, ``data.bands``, ``data.value_range``) is refused when the dataset is built, and a file that would lose
bits or bands here (TIFF, 16-bit PNG, ``.npy``/``.npz``, a 16-bit PGM) is a bad sample whose warning says to
set ``data.decode: cpu``.

Unreadable files are counted bad samples, as with ``data.decode: cpu``:

- in the worker, a file PIL cannot identify, and a JPEG without its end-of-image marker (truncated: the
  common corruption) that PIL then fails to decode, raise :class:`BadSampleError`: ``SafeDataset`` puts the
  next readable sample in its place and counts it;
- on the device, a batch that fails to decode is decoded again one image at a time; an image that still fails
  is decoded by PIL on the CPU (the CPU path's decoder, so such a file is bad exactly when ``data.decode: cpu``
  would find it bad); when PIL fails too, the next good image of the batch stands in, ``batch["bad"]`` marks
  the sample (the trainer counts it against ``train.max_bad_fraction``) and a warning names the file. A file
  that the device decodes without an error (nvJPEG may tolerate damage that PIL refuses) is used as decoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from anymae.core.data.samples import BadSampleError, DataError

from .data import (
    ARRAY_EXTENSIONS,
    TIFF_EXTENSIONS,
    RepeatedFiles,
    full_precision_format,
    high_bit_mode,
    load_image,
)

__all__ = [
    "CropDrawingFiles",
    "DeviceDecode",
    "EncodedBatch",
    "EncodedImage",
    "EncodedImageFiles",
    "is_plain_jpeg",
    "read_header",
]

JPEG_FORMATS = ("JPEG", "MPO")  # PIL's names; MPO: a camera's multi-picture JPEG, decoded as its first picture
DEVICE_MODES = ("RGB", "L")  # JPEG colour modes every decode_jpeg device handles (not CMYK, not YCCK)
EOI_WINDOW = 32  # the end-of-image marker must lie this close to the end of the file, or PIL checks the file


@dataclass
class EncodedImage:
    """One training sample as a worker hands it over: bytes to decode (or pixels) and its augmentation."""

    data: Tensor  # (B,) uint8: the JPEG file's bytes, or the pixels decoded by PIL when ``shape`` is given
    shape: tuple[int, int, int] | None  # (C, H, W) of pixels decoded in the worker; None for JPEG bytes
    box: tuple[int, int, int, int]  # RandomResizedCrop's (top, left, height, width) in the decoded image
    flip: bool
    path: str


@dataclass
class EncodedBatch:
    """A batch of :class:`EncodedImage`: every sample's ``data`` in one tensor (one shared-memory transfer
    from the worker instead of one per sample)."""

    data: Tensor  # (sum of sizes,) uint8
    sizes: list[int]
    shapes: list[tuple[int, int, int] | None]
    boxes: list[tuple[int, int, int, int]]
    flips: list[bool]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.sizes)


class CropDrawingFiles(RepeatedFiles):
    """Image files whose items draw the paper's RandomResizedCrop box and flip with the same generator calls as
    the PIL path (``pretrain_transform``) for the same seed; ``repeats`` as in
    :class:`~anymae.modalities.image.data.RepeatedFiles`. The base of the decode paths that crop tensors."""

    def __init__(
        self, files: Sequence[Path], *, size: tuple[int, int], scale: tuple[float, float], hflip: bool, repeats: int = 1
    ) -> None:
        super().__init__(files, repeats=repeats)
        self.size, self.hflip = list(size), hflip
        # The PIL path's own RandomResizedCrop: its get_params makes the same generator calls.
        self.crop = transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)

    def draw(self, image: Image.Image) -> tuple[tuple[int, int, int, int], bool]:
        """(RandomResizedCrop's (top, left, height, width) for ``image``'s size, RandomHorizontalFlip's draw)."""
        box = self.crop.get_params(image, list(self.crop.scale), list(self.crop.ratio))
        return tuple(box), self.hflip and bool(torch.rand(1) < 0.5)  # the flip is drawn only when the PIL path has it


class EncodedImageFiles(CropDrawingFiles):
    """Image files -> :class:`EncodedImage` with the paper's RandomResizedCrop box and flip drawn (the worker
    half of ``data.decode: gpu``)."""

    def __init__(self, files: Sequence[Path], *, in_chans: int, **crops: Any) -> None:
        super().__init__(files, **crops)
        self.in_chans = in_chans

    def __getitem__(self, index: int) -> EncodedImage:
        path = self.files[index % len(self.files)]
        _refuse_full_precision(path, full_precision_format(path))
        return self._encoded(path.read_bytes(), path)

    def from_bytes(self, raw: bytes, name: Path) -> list[EncodedImage] | None:
        """The ``len(self)`` items of one file holding ``raw`` (a shard sample); None for TIFF, arrays and PNG,
        whose precision the file path checks."""
        if name.suffix.lower() in TIFF_EXTENSIONS + ARRAY_EXTENSIONS + (".png",):
            return None
        return [self._encoded(raw, name) for _ in range(self.repeats)]

    def _encoded(self, raw: bytes, path: Path) -> EncodedImage:
        header = read_header(raw, path)
        _refuse_full_precision(path, f"a {header.format} of mode {header.mode}" if high_bit_mode(header.mode) else None)
        if is_plain_jpeg(header, raw):
            data, shape = torch.frombuffer(bytearray(raw), dtype=torch.uint8), None
            box, flip = self.draw(header)
        else:
            image = load_image(path, self.in_chans, raw)  # raises BadSampleError, as with data.decode: cpu
            pixels = tvf.pil_to_tensor(image)  # (C, H, W) uint8
            data, shape = pixels.reshape(-1), tuple(pixels.shape)
            box, flip = self.draw(image)
        return EncodedImage(data=data, shape=shape, box=box, flip=flip, path=str(path))


def _refuse_full_precision(path: Path, what: str | None) -> None:
    if what is not None:
        raise BadSampleError(
            f"{path} is {what}, read at full precision only by data.decode=cpu (the gpu path decodes 8-bit "
            "images and would drop bits or bands): set data.decode=cpu"
        )


def read_header(raw: bytes, path: Path) -> Image.Image:
    """PIL reads the header only (format, mode, size); a file it cannot identify is a bad sample."""
    try:
        return Image.open(io.BytesIO(raw))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSampleError(f"cannot read image {path}: {exc}") from None


def is_plain_jpeg(header: Image.Image, raw: bytes) -> bool:
    """An RGB or grey JPEG that ends with its end-of-image marker (FF D9) goes to the device as bytes."""
    return header.format in JPEG_FORMATS and header.mode in DEVICE_MODES and b"\xff\xd9" in raw[-EOI_WINDOW:]


class DeviceDecode:
    """The device half of ``data.decode: gpu``: :meth:`collate` runs in the DataLoader workers,
    ``__call__(batch) -> (N, C, H, W)`` float on ``device`` in the training loop (the image modality's
    ``device_transform``). The output equals ``pretrain_transform``'s up to the decoder and the resize
    implementation (bicubic with antialiasing on tensors, PIL's on images)."""

    def __init__(
        self,
        *,
        size: tuple[int, int],
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
    ) -> None:
        self.size, self.in_chans, self.device = list(size), in_chans, torch.device(device)
        self.mode = ImageReadMode.RGB if in_chans == 3 else ImageReadMode.GRAY
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    @staticmethod  # a plain function: the workers receive it without this object's device tensors
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        """SafeDataset items ``{"input": EncodedImage, "bad", "mask"}`` -> one batch; ``input`` an
        :class:`EncodedBatch`, the other keys collated as usual."""
        images: list[EncodedImage] = [item["input"] for item in items]
        batch = default_collate([{k: v for k, v in item.items() if k != "input"} for item in items])
        batch["input"] = EncodedBatch(
            data=torch.cat([im.data for im in images]),
            sizes=[im.data.numel() for im in images],
            shapes=[im.shape for im in images],
            boxes=[im.box for im in images],
            flips=[im.flip for im in images],
            paths=[im.path for im in images],
        )
        return batch

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        """Decode, crop, flip and normalize ``batch["input"]`` on the device -> (N, C, H, W) float32. A sample
        no decoder can read is replaced by the next good one of the batch and marked in ``batch["bad"]``."""
        encoded: EncodedBatch = batch["input"]
        images = self.decode(encoded)
        crops = [
            None if image is None else self.augment(image, box, flip)
            for image, box, flip in zip(images, encoded.boxes, encoded.flips, strict=True)
        ]
        x = torch.stack(_replace_unreadable(crops, encoded.paths, batch["bad"])).float().div_(255)  # (N, C, H, W)
        return (x - self.mean) / self.std

    def decode(self, encoded: EncodedBatch) -> list[Tensor | None]:
        """Each sample as (C, H, W) uint8 on the device; None where no decoder could read the file."""
        pieces = encoded.data.split(encoded.sizes)  # views into the flat tensor, one per sample
        images: list[Tensor | None] = [
            None if shape is None else piece.view(shape).to(self.device, non_blocking=True)
            for piece, shape in zip(pieces, encoded.shapes, strict=True)
        ]
        jpegs = [k for k, shape in enumerate(encoded.shapes) if shape is None]
        if not jpegs:
            return images
        try:
            decoded = decode_jpeg([pieces[k] for k in jpegs], mode=self.mode, device=self.device)
        except RuntimeError:  # one unreadable file fails the whole batch: find it
            decoded = [self._decode_one(pieces[k], encoded.paths[k]) for k in jpegs]
        for k, image in zip(jpegs, decoded, strict=True):
            images[k] = image
        return images

    def _decode_one(self, data: Tensor, path: str) -> Tensor | None:
        try:
            return decode_jpeg(data, mode=self.mode, device=self.device)
        except RuntimeError as exc:
            device_error = f"decode_jpeg on {self.device}: {exc}"
        try:  # the CPU path's decoder decides whether the file is unreadable
            return tvf.pil_to_tensor(load_image(Path(path), self.in_chans)).to(self.device)
        except BadSampleError as exc:
            warnings.warn(
                f"skipping unreadable sample ({exc}; {device_error}); using another image of the batch in its place",
                stacklevel=3,
            )
            return None

    def augment(self, image: Tensor, box: tuple[int, int, int, int], flip: bool) -> Tensor:
        """(C, H, W) uint8 -> (C, size) uint8: RandomResizedCrop's crop and bicubic resize, then the flip."""
        top, left, height, width = box
        crop = tvf.resized_crop(
            image, top, left, height, width, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        return crop.flip(-1) if flip else crop


def _replace_unreadable(crops: list[Tensor | None], paths: list[str], bad: Tensor) -> list[Tensor]:
    """Sample k that no decoder could read takes the crop of the next readable sample (k+1, k+2, ... around
    the batch, as SafeDataset substitutes the next readable index); ``bad[k]`` is set to 1."""
    good = [k for k, crop in enumerate(crops) if crop is not None]
    if not good:
        raise DataError(f"none of the {len(crops)} images of a batch could be decoded; first: {paths[0]}")
    out = []
    for k, crop in enumerate(crops):
        if crop is None:
            crop = crops[next((j for j in good if j > k), good[0])]
            bad[k] = 1
        out.append(crop)
    return out
