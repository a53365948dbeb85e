"""The image modality: 2-D patches, ImageFolder data with the paper's transforms, Figure-2 reconstructions;
8-bit photographs, and multi-band / 16-bit images and arrays at full precision (:mod:`.data`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from anymae.core.data.files import (
    ListedFile,
    check_channel_stats,
    class_folder_samples,
    class_folders,
    read_classes_file,
    read_file_list,
    resolve_data_file,
    resolve_data_root,
)
from anymae.core.data.samples import DataError
from anymae.core.model.figures import removed_values
from anymae.core.model.modality import Modality
from anymae.plugins import hookimpl

from .classification import (
    LabelledImages,
    PilOrTensor,
    classification_eval_transform,
    finetune_tensor_transform,
    finetune_transform,
    linprobe_transform,
)
from .cpu_decode import TensorDecodedImages
from .data import (
    BUILTIN_DEMO_ROOT,
    IMAGE_EXTENSIONS,
    ImageFiles,
    ImageReader,
    demo_photos_root,
    eval_transform,
    find_images,
    pretrain_transform,
)
from .detection import ImageDetectionDataConfig, detection_dataset, load_detection_inputs
from .device_decode import DeviceDecode, EncodedImageFiles
from .formats import HuggingFaceViTMAEFormat, OfficialMAEFormat
from .segment_data import ImageSegmentationDataConfig, segmentation_dataset
from .stats import ImageStatsCommand
from .tokenizer import PatchTokenizer2d
from .visualize import reconstruction_images, save_reconstruction_grid

__all__ = [
    "ImageDataConfig",
    "ImageModality",
    "ImageTokenizerConfig",
    "anymae_register_commands",
    "anymae_register_modalities",
]


@dataclass
class ImageTokenizerConfig:
    """``model.tokenizer`` for images."""

    img_size: int | tuple[int, int] = 224  # H x W, or one int for a square
    patch_size: int = 16
    in_chans: int = 3

    def __post_init__(self) -> None:
        h, w = self.size
        if min(h, w, self.patch_size, self.in_chans) < 1:
            raise ValueError(f"img_size, patch_size and in_chans must be positive, got {self}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image {h}x{w} (img_size) is not divisible by patch {self.patch_size} (patch_size)")

    @property
    def size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)


@dataclass
class ImageDataConfig:
    """``data`` for images: an ImageNet-style folder (``root/train/<class>/*.jpg``), a flat one, or file lists
    (``train_list``: lines ``relative/path [label]``, see :mod:`~anymae.core.data.files`)."""

    root: str = ""  # "builtin:demo_photos" is the set of photographs shipped with anymae
    train_split: str = "train"
    heldout_split: str | None = "val"  # held-out images for the final loss and figure; null for none
    train_list: str | None = None  # a list file (under root unless absolute), used instead of train_split
    heldout_list: str | None = None  # ... used instead of heldout_split
    classes_file: str | None = None  # class names, line i naming label i of the lists (default: "0".."K-1")
    # cpu: JPEGs decoded by torchvision and augmented on uint8 tensors in the workers (about 1.7x PIL's rate; the
    #   same crop boxes and flips); pil: every file through PIL, exactly the official pipeline; gpu: workers read
    #   bytes, the training device decodes and augments. Pre-training only: classifiers augment PIL images.
    decode: Literal["cpu", "pil", "gpu"] = "cpu"
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale (paper: 0.2-1.0)
    classify_scale: tuple[float, float] = (0.08, 1.0)  # ... of fine-tuning and probe training (official: 0.08-1)
    hflip: bool = True  # random flips in pre-training, fine-tuning and probing (false where a flip changes the class)
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN  # one per band, after scaling (anymae image-stats measures them)
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    repeats: int = 1  # list every file this many times per epoch (for tiny datasets)
    heldout_zooms: tuple[float, ...] = (1.0,)  # held-out views: 1.0 = the eval centre crop, 2.0 = its 2x zoom
    bands: tuple[int, ...] | None = None  # the files' bands to use, by index from 0, in this order (default: all)
    value_range: tuple[float, float] | None = None  # stored [lo, hi] -> [0, 1]; default: the integer type's range
    array_layout: Literal["CHW", "HWC"] = "CHW"  # axis order of 3-D .npy/.npz arrays
    rgb_bands: tuple[int, ...] | None = None  # figure bands as R, G, B (or one, grey); default: first 3 (or grey)

    def __post_init__(self) -> None:
        if not 0 < self.classify_scale[0] <= self.classify_scale[1] <= 1:
            raise ValueError(f"classify_scale must satisfy 0 < min <= max <= 1, got {self.classify_scale}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if not self.heldout_zooms or min(self.heldout_zooms) < 1.0:
            raise ValueError(f"heldout_zooms must be one or more values >= 1, got {self.heldout_zooms}")
        if self.bands is not None and (not self.bands or min(self.bands) < 0 or len(set(self.bands)) < len(self.bands)):
            raise ValueError(f"bands must be distinct band indices >= 0, got {list(self.bands)}")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range must be [lo, hi] with lo < hi, got {list(self.value_range)}")
        if self.rgb_bands is not None and (len(self.rgb_bands) not in (1, 3) or min(self.rgb_bands) < 0):
            raise ValueError(f"rgb_bands must be 3 band indices (R, G, B) or 1 (grey), got {list(self.rgb_bands)}")

    def reader(self, in_chans: int) -> ImageReader:
        """How this data's files are read for a model of ``in_chans`` bands."""
        return ImageReader(
            in_chans=in_chans, bands=self.bands, value_range=self.value_range, array_layout=self.array_layout
        )


class ImageModality(Modality):
    name = "image"
    tokenizer_config = ImageTokenizerConfig
    data_config = ImageDataConfig
    data_location_keys = ("train_list", "heldout_list", "classes_file")
    segmentation_data_config = ImageSegmentationDataConfig
    detection_data_config = ImageDetectionDataConfig

    def build_tokenizer(self, config: ImageTokenizerConfig, *, embed_dim: int) -> PatchTokenizer2d:
        return PatchTokenizer2d(
            img_size=config.size, patch_size=config.patch_size, in_chans=config.in_chans, embed_dim=embed_dim
        )

    def build_dataset(self, data: ImageDataConfig, tokenizer: ImageTokenizerConfig, *, split: str) -> Dataset | None:
        _check_bands(data, tokenizer)
        root = _root(data)
        reader = data.reader(tokenizer.in_chans)
        if split == "train":
            files = _train_files(data, root)
            crops = {"size": tokenizer.size, "scale": data.scale, "hflip": data.hflip, "repeats": data.repeats}
            if data.decode == "gpu":  # workers read bytes and draw the crops; device_transform does the rest
                return EncodedImageFiles(files, in_chans=tokenizer.in_chans, **crops)
            if data.decode == "cpu":  # workers decode JPEGs with torchvision and crop uint8 tensors
                return TensorDecodedImages(files, mean=data.mean, std=data.std, reader=reader, **crops)
            transform = pretrain_transform(
                tokenizer.size, scale=data.scale, hflip=data.hflip, mean=data.mean, std=data.std
            )
            return ImageFiles(files, transform=transform, reader=reader, repeats=data.repeats)
        if split == "heldout":
            files = _heldout_files(data, root)
            if files is None:
                return None
            views = [
                ImageFiles(
                    files,
                    transform=eval_transform(tokenizer.size, mean=data.mean, std=data.std, zoom=z),
                    reader=reader,
                )
                for z in data.heldout_zooms
            ]
            return views[0] if len(views) == 1 else ConcatDataset(views)
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")

    def device_transform(
        self, data: ImageDataConfig, tokenizer: ImageTokenizerConfig, *, device: torch.device
    ) -> DeviceDecode | None:
        """``data.decode: gpu``: JPEG decoding, crop, flip and normalization on ``device`` (nvJPEG on CUDA)."""
        if data.decode != "gpu":
            return None
        return DeviceDecode(
            size=tokenizer.size, in_chans=tokenizer.in_chans, mean=data.mean, std=data.std, device=device
        )

    def build_labelled_dataset(
        self,
        data: ImageDataConfig,
        tokenizer: ImageTokenizerConfig,
        *,
        split: str,
        augment: dict[str, Any] | None,
        crop_pct: float = 0.875,
    ) -> LabelledImages:
        _check_bands(data, tokenizer)
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        if data.decode == "gpu":
            raise DataError(
                "data.decode=gpu is for pre-training; fine-tuning, linear probing and evaluation decode on the CPU "
                "(their augmentations work on PIL images): set data.decode=cpu"
            )
        root, reader = _root(data), data.reader(tokenizer.in_chans)
        if augment is None:
            transform = classification_eval_transform(tokenizer.size, mean=data.mean, std=data.std, crop_pct=crop_pct)
        elif augment.get("recipe") == "linprobe":
            transform = linprobe_transform(
                tokenizer.size, mean=data.mean, std=data.std, hflip=data.hflip, scale=data.classify_scale
            )
        else:
            if augment.get("auto_augment") and not reader.photographs:
                raise DataError(
                    f"finetune.auto_augment={augment['auto_augment']!r}: RandAugment works on 8-bit grey or RGB "
                    f"images, and these are read at full precision ({_why_full_precision(data, tokenizer)}); "
                    "set finetune.auto_augment=null"
                )
            common = {"augment": augment, "mean": data.mean, "std": data.std, "hflip": data.hflip,
                      "scale": data.classify_scale}  # fmt: skip
            transform = PilOrTensor(
                pil=finetune_transform(tokenizer.size, **common),
                tensor=finetune_tensor_transform(tokenizer.size, **common),
            )
        classes = _class_names(data, root)
        samples = _labelled_samples(data, root, split=split, classes=classes)
        return LabelledImages(samples, transform=transform, reader=reader, classes=classes)

    def build_segmentation_dataset(
        self, data: ImageSegmentationDataConfig, tokenizer: ImageTokenizerConfig, *, split: str, train: bool
    ) -> Dataset:
        return segmentation_dataset(data, size=tokenizer.size, in_chans=tokenizer.in_chans, split=split, train=train)

    def build_detection_dataset(
        self,
        data: ImageDetectionDataConfig,
        tokenizer: ImageTokenizerConfig,
        *,
        split: str,
        augment: dict[str, Any] | None,
    ) -> Dataset:
        return detection_dataset(data, in_chans=tokenizer.in_chans, split=split, augment=augment)

    def load_detection_inputs(
        self, paths: Sequence[str | Path], data: ImageDetectionDataConfig, tokenizer: ImageTokenizerConfig
    ) -> list[Tensor]:
        return load_detection_inputs(paths, data, in_chans=tokenizer.in_chans)

    def load_inputs(
        self, paths: Sequence[str | Path], data: ImageDataConfig, tokenizer: ImageTokenizerConfig
    ) -> Tensor:
        _check_bands(data, tokenizer)
        transform = eval_transform(tokenizer.size, mean=data.mean, std=data.std)
        reader = data.reader(tokenizer.in_chans)
        return torch.stack([transform(reader(Path(p))) for p in paths])

    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Any,
        data: ImageDataConfig,
        path: str | Path,
        caption: str = "",
    ) -> Path:
        columns = reconstruction_images(inputs, pred, mask, tokenizer=tokenizer)
        removed = removed_values(mask, tokenizer=tokenizer)  # (N, C, H, W)
        return save_reconstruction_grid(
            columns, removed, mean=data.mean, std=data.std, rgb_bands=data.rgb_bands, path=path, caption=caption
        )


def _root(data: ImageDataConfig) -> Path:
    return resolve_data_root(data.root, holds=f"{data.train_split}/", builtin={BUILTIN_DEMO_ROOT: demo_photos_root})


def _files(folder: Path) -> list[Path]:
    files = find_images(folder)
    if not files:
        raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def _listed(listed: str, root: Path, key: str, **options: Any) -> list[ListedFile]:
    """The (file, label) lines of the list file ``listed``, the value of ``data.<key>``."""
    return read_file_list(resolve_data_file(listed, root, key=key), root, what="image", **options)


def _train_files(data: ImageDataConfig, root: Path) -> list[Path]:
    """Pre-training images: ``data.train_list`` (labels ignored) or every image under ``data.train_split``."""
    if data.train_list is not None:
        return [file for file, _ in _listed(data.train_list, root, "train_list", labelled=False)]
    folder = root / data.train_split
    if not folder.is_dir():
        raise DataError(f"data.train_split: folder {folder} does not exist")
    return _files(folder)


def _heldout_files(data: ImageDataConfig, root: Path) -> list[Path] | None:
    """``data.heldout_list``, or the images under ``data.heldout_split``; None when neither is there."""
    if data.heldout_list is not None:
        return [file for file, _ in _listed(data.heldout_list, root, "heldout_list", labelled=False)]
    if data.heldout_split is None or not (root / data.heldout_split).is_dir():
        return None
    return _files(root / data.heldout_split)


def _class_names(data: ImageDataConfig, root: Path) -> list[str]:
    """One class numbering for every split: the training split's class folders; for a training list the
    names in ``data.classes_file``, else ``"0".."K-1"`` with K = the list's largest label + 1."""
    if data.train_list is None:
        if data.classes_file is not None:
            raise DataError(
                "data.classes_file names the labels of data.train_list; with class folders the folder names are "
                "the classes (set data.train_list, or remove data.classes_file)"
            )
        return class_folders(root / data.train_split)
    if data.classes_file is not None:
        return read_classes_file(resolve_data_file(data.classes_file, root, key="classes_file"))
    labels = [label for _, label in _listed(data.train_list, root, "train_list", labelled=True, check_files=False)]
    if max(labels) < 1:
        raise DataError("data.train_list: every label is 0; classification needs at least 2 classes")
    return [str(i) for i in range(max(labels) + 1)]


def _labelled_samples(data: ImageDataConfig, root: Path, *, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    """``split``'s (file, class index) pairs: from its list file, else from its class folders."""
    listed = data.train_list if split == "train" else data.heldout_list
    if listed is not None:
        return _listed(listed, root, f"{split}_list", labelled=True, classes=classes)  # type: ignore[return-value]
    folder = data.train_split if split == "train" else data.heldout_split
    if folder is None:
        raise DataError("data.heldout_split is null: no labelled heldout split (or set data.heldout_list)")
    if data.train_list is not None:  # numbered classes cannot be matched with class folder names
        raise DataError(
            f"data.train_list gives the classes as numbers 0..{len(classes) - 1}; give the held-out images as a "
            "list too (data.heldout_list)"
        )
    return class_folder_samples(root / folder, classes, extensions=IMAGE_EXTENSIONS)


def _check_bands(data: ImageDataConfig, tokenizer: ImageTokenizerConfig) -> None:
    """The data keys that must agree with ``model.tokenizer.in_chans``, checked before any file is read."""
    chans = tokenizer.in_chans
    check_channel_stats(data.mean, data.std, chans, hint="; `anymae image-stats FOLDER` measures one per band")
    if data.bands is not None and len(data.bands) != chans:
        raise DataError(f"data.bands selects {len(data.bands)} bands, but model.tokenizer.in_chans={chans}")
    if data.rgb_bands is not None and max(data.rgb_bands) >= chans:
        raise DataError(f"data.rgb_bands={list(data.rgb_bands)}: the model's input has bands 0..{chans - 1}")
    if data.decode == "gpu" and not data.reader(chans).photographs:
        raise DataError(
            f"data.decode=gpu decodes 8-bit JPEGs to grey or RGB; these images are read at full precision on the "
            f"CPU ({_why_full_precision(data, tokenizer)}): set data.decode=cpu"
        )


def _why_full_precision(data: ImageDataConfig, tokenizer: ImageTokenizerConfig) -> str:
    """The config keys that send every file down the full-precision path."""
    keys = [f"model.tokenizer.in_chans={tokenizer.in_chans}"] if tokenizer.in_chans not in (1, 3) else []
    keys += [f"data.{key}={list(value)}" for key, value in (("bands", data.bands), ("value_range", data.value_range))
             if value]  # fmt: skip
    return ", ".join(keys)


@hookimpl
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    register(ImageModality())


@hookimpl
def anymae_register_checkpoint_formats(register: Callable[[str, Any], None]) -> None:
    register("official-mae", OfficialMAEFormat())
    register("hf-vitmae", HuggingFaceViTMAEFormat())


@hookimpl
def anymae_register_commands(register: Callable[[str, Any], None]) -> None:
    register("image-stats", ImageStatsCommand())
