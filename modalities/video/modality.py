"""The video modality: tubelet tokens, VideoMAE's clip sampling and augmentation, tube masking and targets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.data.files import check_channel_stats, resolve_data_file, resolve_data_root
from anymae.core.data.samples import DataError
from anymae.core.model.modality import Modality
from anymae.plugins import hookimpl

from .classification import LabelledVideos, clip_transform, eval_transform, labelled_items, split_classes
from .data import VideoClips, find_split
from .decode import read_clips
from .decoder import videomae_decoder
from .demo import DEMO_ROOTS
from .interop import VideoMAEFormat
from .masking import tube_masking
from .sampling import FRAME_SAMPLERS
from .targets import VideoMAEPixelTarget, VideoMAETarget
from .tokenizer import POSITION_TABLES, TubeletTokenizer
from .transforms import eval_clip, pretrain_clip
from .visualize import reconstruction_rows, save_reconstruction_grid, save_reconstruction_movie
from .windows import video_windows

__all__ = [
    "VideoDataConfig",
    "VideoModality",
    "VideoTokenizerConfig",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
    "anymae_register_targets",
]


@dataclass
class VideoTokenizerConfig:
    """``model.tokenizer`` for video; the defaults are VideoMAE's (16 frames of 224x224, tubelets 2x16x16)."""

    num_frames: int = 16
    img_size: int | tuple[int, int] = 224  # H x W of the crops, or one int for a square
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    pos_embed: Literal["videomae", "sincos_3d", "learned"] = "videomae"

    def __post_init__(self) -> None:
        h, w = self.size
        if min(self.num_frames, h, w, self.patch_size, self.tubelet_size, self.in_chans) < 1:
            raise ValueError(f"num_frames, img_size, patch_size, tubelet_size, in_chans must be positive: {self}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frames {h}x{w} (img_size) are not divisible by patch {self.patch_size} (patch_size)")
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"num_frames {self.num_frames} is not divisible by tubelet {self.tubelet_size} (tubelet_size)"
            )
        if self.pos_embed not in POSITION_TABLES:
            raise ValueError(f"pos_embed {self.pos_embed!r} is not one of {', '.join(POSITION_TABLES)}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)


@dataclass
class VideoDataConfig:
    """``data`` for video: ``<root>/<split>.csv`` (``path label`` lines) or ``<root>/<split>/`` (class
    folders or flat). Fine-tuning, linear probing and evaluation need labels: integer CSV labels (classes
    ``"0"``..``"K-1"``, or the names in ``classes_file``) or class folders (their sorted names)."""

    root: str = ""  # "builtin:demo_videos" / "builtin:demo_motion" (labelled) generate a small set once (cached)
    train_split: str = "train"
    heldout_split: str | None = "val"  # null for none
    sampling_rate: int = 4  # frames between sampled frames (VideoMAE: 4 for Kinetics, 2 for SSv2)
    num_sample: int = 1  # clips per video read (pre-training: repeated sampling; fine-tuning: repeated augmentation)
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # GroupMultiScaleCrop scales
    max_distort: int = 1
    fix_crop: bool = True  # crop offsets on a fixed quarter grid (VideoMAE), else uniform
    more_fix_crop: bool = True  # 13 fixed offsets instead of 5
    hflip: bool = False  # VideoMAE pre-training has no flip (and SSv2 must never be flipped)
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    repeats: int = 1  # list every video this many times per epoch (for tiny datasets)
    heldout_clips: int = 1  # evenly spaced clips per held-out video
    # Labelled data (anymae finetune / linprobe / eval):
    classes_file: str | None = None  # class names, one a line in index order; default: CSV labels 0..max, or folders
    frame_sampler: Literal["clip", "segments"] = "clip"  # VideoMAE's Kinetics clips, or SSv2's frame per segment
    classify_hflip: bool = True  # flip when fine-tuning / probing (VideoMAE: Kinetics yes, SSv2 never)
    test_num_segment: int = 1  # evaluation clips per video (VideoMAE: 5 Kinetics, 2 SSv2)
    test_num_crop: int = 1  # evaluation crops per clip along the longer side (VideoMAE: 3)

    def __post_init__(self) -> None:
        if self.frame_sampler not in FRAME_SAMPLERS:
            raise ValueError(f"frame_sampler {self.frame_sampler!r} is not one of {', '.join(FRAME_SAMPLERS)}")
        counts = {"sampling_rate": self.sampling_rate, "num_sample": self.num_sample, "repeats": self.repeats,
                  "heldout_clips": self.heldout_clips, "test_num_segment": self.test_num_segment,
                  "test_num_crop": self.test_num_crop}  # fmt: skip
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be one or more values in (0, 1], got {self.scales}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")


class VideoModality(Modality):
    name = "video"
    tokenizer_config = VideoTokenizerConfig
    data_config = VideoDataConfig
    data_location_keys = ("classes_file",)

    def build_tokenizer(self, config: VideoTokenizerConfig, *, embed_dim: int) -> TubeletTokenizer:
        return TubeletTokenizer(
            num_frames=config.num_frames,
            img_size=config.size,
            patch_size=config.patch_size,
            tubelet_size=config.tubelet_size,
            in_chans=config.in_chans,
            embed_dim=embed_dim,
            pos_embed=config.pos_embed,
        )

    def build_dataset(self, data: VideoDataConfig, tokenizer: VideoTokenizerConfig, *, split: str) -> Dataset | None:
        _check_channels(data, tokenizer)
        root = _root(data)
        if split == "train":
            try:
                items = find_split(root, data.train_split)
            except FileNotFoundError as exc:
                raise DataError(f"data.train_split: {exc}") from None
            transform = partial(_train_transform, size=tokenizer.size, data=data, in_chans=tokenizer.in_chans)
            return VideoClips(
                [p for p, _ in items],
                num_frames=tokenizer.num_frames,
                sampling_rate=data.sampling_rate,
                transform=transform,
                mode="random",
                num_clips=data.num_sample,
                repeats=data.repeats,
            )
        if split == "heldout":
            if data.heldout_split is None:
                return None
            try:
                items = find_split(root, data.heldout_split)
            except FileNotFoundError:
                return None
            return VideoClips(
                [p for p, _ in items],
                num_frames=tokenizer.num_frames,
                sampling_rate=data.sampling_rate,
                transform=partial(_eval_transform, size=tokenizer.size, data=data, in_chans=tokenizer.in_chans),
                mode="uniform",
                num_clips=data.heldout_clips,
            )
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")

    def build_labelled_dataset(
        self,
        data: VideoDataConfig,
        tokenizer: VideoTokenizerConfig,
        *,
        split: str,
        augment: dict[str, Any] | None,
        crop_pct: float = 0.875,
    ) -> LabelledVideos:
        """Labelled clips of ``split`` ("train" or "heldout"): training clips augmented by ``augment["recipe"]``
        ("finetune" or "linprobe"), or (``augment=None``) VideoMAE's test views, ``data.test_num_segment`` x
        ``data.test_num_crop`` per video, shorter side resized to ``max(img_size) / crop_pct``."""
        _check_channels(data, tokenizer)
        root = _root(data)
        splits = {"train": data.train_split, "heldout": data.heldout_split}
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        if splits[split] is None:
            raise DataError(f"data.heldout_split is null: no labelled {split} split")
        classes_file = None
        if data.classes_file:
            classes_file = resolve_data_file(data.classes_file, root, key="classes_file")
        # One class numbering for every split: the training split's (or the classes file's).
        classes = split_classes(root, data.train_split, classes_file=classes_file)
        items = labelled_items(root, splits[split], classes, named=classes_file is not None)
        common = {"mean": data.mean, "std": data.std, "in_chans": tokenizer.in_chans}
        if augment is None:
            transform = eval_transform(tokenizer.size, crop_pct=crop_pct, num_crops=data.test_num_crop, **common)
        else:
            transform = clip_transform(tokenizer.size, augment=augment, hflip=data.classify_hflip, **common)
            items = items * data.repeats
        return LabelledVideos(
            items,
            classes=classes,
            transform=transform,
            num_frames=tokenizer.num_frames,
            sampling_rate=data.sampling_rate,
            sampler=data.frame_sampler,
            train=augment is not None,
            num_segments=data.test_num_segment,
            num_crops=data.test_num_crop,
            num_sample=data.num_sample,
        )

    def load_inputs(
        self, paths: Sequence[str | Path], data: VideoDataConfig, tokenizer: VideoTokenizerConfig
    ) -> Tensor:
        _check_channels(data, tokenizer)
        clips = []
        for path in paths:
            (frames,) = read_clips(
                path, num_frames=tokenizer.num_frames, sampling_rate=data.sampling_rate, mode="uniform"
            )
            clips.append(_eval_transform(frames, None, size=tokenizer.size, data=data, in_chans=tokenizer.in_chans))
        return torch.stack(clips)

    def load_windows(
        self,
        path: str | Path,
        data: VideoDataConfig,
        tokenizer: VideoTokenizerConfig,
        *,
        window: float | None = None,
        hop: float | None = None,
    ) -> Iterator[tuple[float, Tensor]]:
        """The whole video in windows of ``window`` seconds (default: ``num_frames`` frames ``data.sampling_rate``
        apart) every ``hop`` seconds (default: ``window``), each a clip (C, T, H, W) with the evaluation transform."""
        _check_channels(data, tokenizer)
        return video_windows(
            path,
            num_frames=tokenizer.num_frames,
            sampling_rate=data.sampling_rate,
            window=window,
            hop=hop,
            transform=partial(_eval_transform, rng=None, size=tokenizer.size, data=data, in_chans=tokenizer.in_chans),
        )

    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Any,
        data: VideoDataConfig,
        path: str | Path,
        caption: str = "",
    ) -> Path:
        """The PNG grid at ``path``, and beside it (same name) an animated GIF and an H.264 MP4."""
        samples = reconstruction_rows(inputs, pred, mask, tokenizer=tokenizer, mean=data.mean, std=data.std)
        for suffix in (".gif", ".mp4"):
            save_reconstruction_movie(samples, path=Path(path).with_suffix(suffix), caption=caption)
        return save_reconstruction_grid(samples, path=path, caption=caption)


def _train_transform(
    frames: np.ndarray, rng: np.random.Generator, *, size: tuple[int, int], data: VideoDataConfig, in_chans: int
) -> Tensor:
    return pretrain_clip(
        frames,
        size,
        scales=data.scales,
        max_distort=data.max_distort,
        fix_crop=data.fix_crop,
        more_fix_crop=data.more_fix_crop,
        hflip=data.hflip,
        mean=data.mean,
        std=data.std,
        in_chans=in_chans,
        rng=rng,
    )


def _eval_transform(
    frames: np.ndarray, rng: Any, *, size: tuple[int, int], data: VideoDataConfig, in_chans: int
) -> Tensor:
    return eval_clip(frames, size, mean=data.mean, std=data.std, in_chans=in_chans)


def _root(data: VideoDataConfig) -> Path:
    return resolve_data_root(data.root, holds=f"{data.train_split}/ or {data.train_split}.csv", builtin=DEMO_ROOTS)


def _check_channels(data: VideoDataConfig, tokenizer: VideoTokenizerConfig) -> None:
    if tokenizer.in_chans not in (1, 3):
        raise DataError(
            f"model.tokenizer.in_chans={tokenizer.in_chans}: video files decode to 1 (grey) or 3 (RGB) channels"
        )
    check_channel_stats(data.mean, data.std, tokenizer.in_chans)


@hookimpl
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    register(VideoModality())


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("tube", tube_masking)


@hookimpl
def anymae_register_targets(register: Callable[[str, Any], None]) -> None:
    register("videomae", VideoMAETarget())
    register("videomae_pixels", VideoMAEPixelTarget())


@hookimpl
def anymae_register_decoders(register: Callable[[str, Any], None]) -> None:
    register("videomae", videomae_decoder)


@hookimpl
def anymae_register_checkpoint_formats(register: Callable[[str, Any], None]) -> None:
    register("videomae", VideoMAEFormat())
