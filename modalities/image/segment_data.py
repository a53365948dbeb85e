"""``data`` of ``anymae segment`` for images: where the (image, mask) pairs are, how they are normalised and
mmseg's ADE20K training augmentation (:mod:`.segmentation`), and the datasets built from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from anymae.core.config.segment import SegmentationDataConfig
from anymae.core.data.files import check_channel_stats, resolve_data_file, resolve_data_root
from anymae.core.data.samples import DataError

from .data import ImageReader
from .segment_demo import SEGMENT_DEMO_ROOT, demo_segment_root
from .segmentation import SegmentationFiles, ade20k_pairs, eval_transform, read_pair_list, train_transform

__all__ = ["ImageSegmentationDataConfig", "segmentation_dataset"]


@dataclass
class ImageSegmentationDataConfig(SegmentationDataConfig):
    """``data`` of ``anymae segment`` for images: the ADE20K layout under ``root`` (or list files), the bands and
    normalisation of the images, and mmseg's ADE20K training pipeline (``configs/_base_/datasets/ade20k.py``)."""

    root: str = ""  # "builtin:demo_segment": the generated demo set (64x64 shapes on photographs, 6 classes)
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN  # one per band, after scaling
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    scale: tuple[int, int] | None = None  # mmseg img_scale (long, short) before ratio_range; default 4x / 1x crop
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor (mmseg ADE20K)
    cat_max_ratio: float = 0.75  # crops redrawn (up to 10 times) while one class covers more (mmseg ADE20K)
    hflip: bool = True  # random horizontal flip, probability 0.5
    photometric: bool = True  # SSD photometric distortion (RGB only)
    bands: tuple[int, ...] | None = None  # the files' bands to use, in this order (default: all)
    value_range: tuple[float, float] | None = None  # stored [lo, hi] -> [0, 1]; default: the integer type's range
    array_layout: str = "CHW"  # axis order of 3-D .npy arrays: CHW or HWC

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < min <= max, got {list(self.ratio_range)}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
        if self.scale is not None and min(self.scale) < 1:
            raise ValueError(f"scale must be positive, got {list(self.scale)}")
        if self.array_layout not in ("CHW", "HWC"):
            raise ValueError(f"array_layout must be CHW or HWC, got {self.array_layout!r}")

    def reader(self, in_chans: int) -> ImageReader:
        return ImageReader(
            in_chans=in_chans, bands=self.bands, value_range=self.value_range, array_layout=self.array_layout
        )


def segmentation_dataset(
    data: ImageSegmentationDataConfig, *, size: tuple[int, int], in_chans: int, split: str, train: bool
) -> SegmentationFiles:
    """``split`` ("train" or "heldout") of ``data`` as (image, mask) items: ``train`` with mmseg's pipeline cropped
    to ``size``, else normalised at full resolution."""
    check_channel_stats(data.mean, data.std, in_chans, hint="; `anymae image-stats FOLDER` measures one per band")
    if data.bands is not None and len(data.bands) != in_chans:
        raise DataError(f"data.bands selects {len(data.bands)} bands, but the model reads {in_chans}")
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    listed = data.train_list if split == "train" else data.heldout_list
    folder = data.train_split if split == "train" else data.heldout_split
    root = resolve_data_root(data.root, holds=f"images/{folder}/ and annotations/{folder}/",
                             builtin={SEGMENT_DEMO_ROOT: demo_segment_root})  # fmt: skip
    if listed is not None:
        pairs = read_pair_list(resolve_data_file(listed, root, key=f"{split}_list"), root)
    else:
        pairs = ade20k_pairs(Path(root), folder)
    if train:
        scale = data.scale or (4 * max(size), min(size))  # ADE20K: (2048, 512) for 512 crops
        transform = train_transform(size, scale=scale, mean=data.mean, std=data.std, ratios=data.ratio_range,
                                    cat_max_ratio=data.cat_max_ratio, hflip=data.hflip, photometric=data.photometric,
                                    ignore_index=data.ignore_index)  # fmt: skip
    else:
        transform = eval_transform(mean=data.mean, std=data.std)
    return SegmentationFiles(pairs, reader=data.reader(in_chans), transform=transform, num_classes=data.num_classes,
                             ignore_index=data.ignore_index, reduce_zero_label=data.reduce_zero_label)  # fmt: skip
