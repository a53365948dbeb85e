"""The audio modality: AudioMAE's log-mel spectrograms in 16 x 16 patches, audio file lists, spectrogram figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.data import DataError
from anymae.core.modality import Modality
from anymae.plugins import hookimpl

from .data import AudioClips, ClipList, FeatureSettings, read_clip_list
from .decode import SAMPLE_RATE
from .decoder import LocalDecoder
from .demo import BUILTIN_DEMO_ROOT, resolve_root
from .features import AUDIOSET_MEAN, AUDIOSET_STD
from .interop import AudioMAEFormat
from .masking import STRATEGIES
from .stats import AudioStatsCommand
from .tokenizer import SpectrogramTokenizer
from .visualize import save_spectrogram_figure

__all__ = [
    "AudioDataConfig",
    "AudioModality",
    "AudioTokenizerConfig",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
]


@dataclass
class AudioTokenizerConfig:
    """``model.tokenizer`` for audio: the fbank image (T frames x F mel bins) and the patch size."""

    target_length: int = 1024  # T: frames of 10 ms (1024 for AudioSet, 512 for ESC-50, 128 for Speech Commands)
    num_mel_bins: int = 128  # F
    patch_size: int = 16

    def __post_init__(self) -> None:
        if min(self.target_length, self.num_mel_bins, self.patch_size) < 1:
            raise ValueError(f"target_length, num_mel_bins and patch_size must be positive, got {self}")
        if self.target_length % self.patch_size:
            raise ValueError(f"target_length {self.target_length} is not divisible by patch_size {self.patch_size}")
        if self.num_mel_bins % self.patch_size:
            raise ValueError(f"num_mel_bins {self.num_mel_bins} is not divisible by patch_size {self.patch_size}")


@dataclass
class AudioDataConfig:
    """``data`` for audio. ``train_split``/``heldout_split`` are relative to ``root`` (or absolute): a folder
    (class sub-folders or flat), an AudioSet ``.json`` (labels from ``label_csv``) or a ``path label`` ``.csv``."""

    root: str = ""  # "builtin:demo_sounds": chirps, tones and noise bursts generated at first use
    train_split: str = "train"
    heldout_split: str | None = "heldout"  # final held-out loss and figure; null for none
    label_csv: str | None = None  # AudioSet class_labels_indices.csv, for .json lists
    sample_rate: int = SAMPLE_RATE  # every file is resampled to this rate
    mean: float = AUDIOSET_MEAN  # fbank statistics of the data set (anymae audio-stats computes them)
    std: float = AUDIOSET_STD
    train_crop: Literal["random", "center", "start"] = "random"  # a long clip's window; AudioMAE keeps the start
    eval_crop: Literal["center", "start"] = "center"
    roll_mag_aug: bool = False  # AudioMAE's AudioSet-2M augmentation: amplitude x (Beta(10, 10) + 0.5)
    repeats: int = 1  # list every training file this many times per epoch (for tiny data sets)

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be at least 1000 Hz, got {self.sample_rate}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")


class AudioModality(Modality):
    name = "audio"
    tokenizer_config = AudioTokenizerConfig
    data_config = AudioDataConfig

    def build_tokenizer(self, config: AudioTokenizerConfig, *, embed_dim: int) -> SpectrogramTokenizer:
        return SpectrogramTokenizer(
            target_length=config.target_length,
            num_mel_bins=config.num_mel_bins,
            patch_size=config.patch_size,
            embed_dim=embed_dim,
        )

    def build_dataset(self, data: AudioDataConfig, tokenizer: AudioTokenizerConfig, *, split: str) -> Dataset | None:
        if not data.root:
            raise DataError(f"data.root is required: a folder holding {data.train_split}, or {BUILTIN_DEMO_ROOT!r}")
        root = resolve_root(data.root)
        if not root.is_dir():
            raise DataError(f"data.root: folder {root} does not exist")
        settings = _settings(data, tokenizer)
        if split == "train":
            clips = _clips(root, data.train_split, data, key="data.train_split")
            return AudioClips(
                clips, settings=settings, crop=data.train_crop, roll_mag_aug=data.roll_mag_aug, repeats=data.repeats
            )
        if split == "heldout":
            if data.heldout_split is None or not (root / data.heldout_split).exists():
                return None
            clips = _clips(root, data.heldout_split, data, key="data.heldout_split")
            return AudioClips(clips, settings=settings, crop=data.eval_crop)
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")

    def load_inputs(
        self, paths: Sequence[str | Path], data: AudioDataConfig, tokenizer: AudioTokenizerConfig
    ) -> Tensor:
        clips = AudioClips(
            ClipList([Path(p) for p in paths], None, []), settings=_settings(data, tokenizer), crop=data.eval_crop
        )
        return torch.stack([clips[i] for i in range(len(clips))])  # (N, 1, T, F)

    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Any,
        data: AudioDataConfig,
        path: str | Path,
    ) -> Path:
        return save_spectrogram_figure(inputs, pred, mask, tokenizer=tokenizer, path=path)


def _settings(data: AudioDataConfig, tokenizer: AudioTokenizerConfig) -> FeatureSettings:
    return FeatureSettings(
        sample_rate=data.sample_rate,
        num_mel_bins=tokenizer.num_mel_bins,
        target_length=tokenizer.target_length,
        mean=data.mean,
        std=data.std,
    )


def _clips(root: Path, split: str, data: AudioDataConfig, *, key: str) -> ClipList:
    source = Path(split).expanduser()
    source = source if source.is_absolute() else root / source
    label_csv = None
    if data.label_csv is not None:
        label_csv = Path(data.label_csv).expanduser()
        label_csv = label_csv if label_csv.is_absolute() else root / label_csv
    if not source.exists():
        raise DataError(f"{key}: {source} does not exist")
    try:
        return read_clip_list(source, label_csv=label_csv)
    except DataError as exc:
        raise DataError(f"{key}: {exc}") from None


@hookimpl
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    register(AudioModality())


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    for name, strategy in STRATEGIES.items():
        register(name, strategy)


@hookimpl
def anymae_register_decoders(register: Callable[[str, Any], None]) -> None:
    register("local", LocalDecoder)  # its keyword arguments beyond the core's are model.decoder_options


@hookimpl
def anymae_register_checkpoint_formats(register: Callable[[str, Any], None]) -> None:
    register("audiomae", AudioMAEFormat())


@hookimpl
def anymae_register_commands(register: Callable[[str, Any], None]) -> None:
    register("audio-stats", AudioStatsCommand())
