"""The audio modality: AudioMAE's log-mel spectrograms in 16 x 16 patches, audio file lists, spectrogram figures."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.data.files import resolve_data_root, under_root
from anymae.core.data.samples import DataError
from anymae.core.model.modality import Modality
from anymae.plugins import hookimpl

from .classification import Augmentation, LabelledClips, is_multi_hot
from .data import AudioClips, ClipList, FeatureSettings, read_clip_list, select_folds, without_files
from .decode import SAMPLE_RATE
from .decoder import LocalDecoder
from .demo import DEMO_ROOTS
from .features import AUDIOSET_MEAN, AUDIOSET_STD
from .interop import AudioMAEFormat
from .masking import STRATEGIES
from .stats import AudioStatsCommand
from .tokenizer import SpectrogramTokenizer
from .visualize import save_spectrogram_figure
from .windows import audio_windows

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
    (class sub-folders or flat), an AudioSet ``.json`` (labels from ``label_csv``), a ``path label`` ``.csv`` or
    a metadata table with a header (ESC-50's ``meta/esc50.csv``).

    The fields after ``repeats`` are for fine-tuning / linear probing / evaluation (``anymae finetune``, ...):
    the fine-tuning augmentation of AudioMAE (SpecAugment, in-dataset mixup, noise) and the label layout."""

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
    audio_dir: str | None = None  # relative paths in lists resolve against this folder under root (ESC-50: audio)
    multi_label: bool | None = None  # null: .json lists are multi-label (BCE, mAP), other lists single-label
    fold: int | None = None  # a list with a fold column (ESC-50): train on the other folds, hold this one out
    exclude_lists: list[str] = field(default_factory=list)  # lists whose files leave the labelled training split
    freqm: int = 0  # fine-tuning SpecAugment: widest frequency stripe in mel bins (AudioMAE AudioSet: 48)
    timem: int = 0  # fine-tuning SpecAugment: widest time stripe in frames (AudioMAE AudioSet: 192)
    mixup: float = 0.0  # fine-tuning: probability of in-dataset waveform mixup, Beta(10, 10) (AudioSet: 0.5)
    noise: bool = False  # fine-tuning: AudioMAE's `noise` (uniform noise + a time roll; its Speech Commands runs)
    eval_views: int = 1  # evaluation: V > 1 windows spread evenly over each clip, logits merged by the core

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be at least 1000 Hz, got {self.sample_rate}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.freqm < 0 or self.timem < 0:
            raise ValueError(f"freqm and timem are stripe widths >= 0, got freqm={self.freqm}, timem={self.timem}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup > 0 and self.multi_label is False:
            raise ValueError("mixup > 0 mixes labels into soft multi-label targets; it needs multi_label true or null")
        if self.eval_views < 1:
            raise ValueError(f"eval_views must be at least 1, got {self.eval_views}")


class AudioModality(Modality):
    name = "audio"
    tokenizer_config = AudioTokenizerConfig
    data_config = AudioDataConfig
    data_location_keys = ("label_csv", "audio_dir", "multi_label", "fold", "exclude_lists")

    def build_tokenizer(self, config: AudioTokenizerConfig, *, embed_dim: int) -> SpectrogramTokenizer:
        return SpectrogramTokenizer(
            target_length=config.target_length,
            num_mel_bins=config.num_mel_bins,
            patch_size=config.patch_size,
            embed_dim=embed_dim,
        )

    def build_dataset(self, data: AudioDataConfig, tokenizer: AudioTokenizerConfig, *, split: str) -> Dataset | None:
        root = _root(data)
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

    def build_labelled_dataset(
        self,
        data: AudioDataConfig,
        tokenizer: AudioTokenizerConfig,
        *,
        split: str,
        augment: dict[str, Any] | None,
        crop_pct: float = 0.875,
    ) -> LabelledClips:
        """Labelled clips; ``augment["recipe"]`` "finetune" applies ``data``'s AudioMAE augmentation, "linprobe"
        only the random window, ``None`` is evaluation (``eval_crop``, ``eval_views``). The image options of
        ``augment`` (``auto_augment``, ``reprob``, ...) and ``crop_pct`` do not apply to spectrograms."""
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        root = _root(data)
        train = _labelled_list(root, data, split="train")
        clips = train if split == "train" else _labelled_list(root, data, split="heldout", classes=train.classes)
        multi_label = _is_multi_label(data, train)
        settings = _settings(data, tokenizer)
        if augment is None:
            return LabelledClips(
                clips, settings=settings, multi_label=multi_label, crop=data.eval_crop, views=data.eval_views
            )
        recipe = augment.get("recipe")
        if recipe not in ("finetune", "linprobe"):
            raise ValueError(f"unknown augmentation recipe {recipe!r}; expected 'finetune' or 'linprobe'")
        augmentation = Augmentation()
        if recipe == "finetune":
            augmentation = Augmentation(
                freqm=data.freqm, timem=data.timem, mixup=data.mixup, roll_mag_aug=data.roll_mag_aug, noise=data.noise
            )
        return LabelledClips(
            clips,
            settings=settings,
            multi_label=multi_label,
            crop=data.train_crop,
            augmentation=augmentation,
            repeats=data.repeats if split == "train" else 1,
        )

    def load_inputs(
        self, paths: Sequence[str | Path], data: AudioDataConfig, tokenizer: AudioTokenizerConfig
    ) -> Tensor:
        clips = AudioClips(
            ClipList([Path(p) for p in paths], None, []), settings=_settings(data, tokenizer), crop=data.eval_crop
        )
        return torch.stack([clips[i] for i in range(len(clips))])  # (N, 1, T, F)

    def load_windows(
        self,
        path: str | Path,
        data: AudioDataConfig,
        tokenizer: AudioTokenizerConfig,
        *,
        window: float | None = None,
        hop: float | None = None,
    ) -> Iterator[tuple[float, Tensor]]:
        """The whole file in windows of ``window`` seconds (default: the model's ``target_length`` frames) every
        ``hop`` seconds (default: ``window``), each an fbank input (1, T, F)."""
        return audio_windows(path, _settings(data, tokenizer), window=window, hop=hop)

    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Any,
        data: AudioDataConfig,
        path: str | Path,
        caption: str = "",
    ) -> Path:
        return save_spectrogram_figure(inputs, pred, mask, tokenizer=tokenizer, path=path, caption=caption)


def _settings(data: AudioDataConfig, tokenizer: AudioTokenizerConfig) -> FeatureSettings:
    return FeatureSettings(
        sample_rate=data.sample_rate,
        num_mel_bins=tokenizer.num_mel_bins,
        target_length=tokenizer.target_length,
        mean=data.mean,
        std=data.std,
    )


def _root(data: AudioDataConfig) -> Path:
    return resolve_data_root(data.root, holds=data.train_split, builtin=DEMO_ROOTS)


def _clips(root: Path, split: str, data: AudioDataConfig, *, key: str) -> ClipList:
    source = under_root(split, root)
    label_csv = None if data.label_csv is None else under_root(data.label_csv, root)
    base = None if data.audio_dir is None else under_root(data.audio_dir, root)
    if not source.exists():
        raise DataError(f"{key}: {source} does not exist")
    try:
        return read_clip_list(source, label_csv=label_csv, base=base, compact=True)
    except DataError as exc:
        raise DataError(f"{key}: {exc}") from None


def _labelled_list(root: Path, data: AudioDataConfig, *, split: str, classes: list[str] | None = None) -> ClipList:
    """The labelled clips of ``split``: a fold of the training list (``data.fold``), the training list minus
    ``exclude_lists``, or the held-out list renumbered to the training ``classes``."""
    if split == "train" or data.fold is not None:
        clips = _clips(root, data.train_split, data, key="data.train_split")
        if data.fold is not None:
            return select_folds(clips, data.fold, keep=split == "heldout")
        for name in data.exclude_lists:
            listed = _clips(root, name, data, key="data.exclude_lists")
            clips = without_files(clips, set(listed.files))
        return _require_labels(clips, "data.train_split")
    if data.heldout_split is None:
        raise DataError("data.heldout_split is null (and no data.fold): there is no labelled held-out split")
    clips = _require_labels(_clips(root, data.heldout_split, data, key="data.heldout_split"), "data.heldout_split")
    return _renumbered(clips, classes or [], key="data.heldout_split")


def _require_labels(clips: ClipList, key: str) -> ClipList:
    if clips.labels is None:
        raise DataError(
            f"{key}: the list has no labels; classification needs class sub-folders, a 'path label' list, "
            "a metadata table or an AudioSet .json with data.label_csv"
        )
    return clips


def _renumbered(clips: ClipList, classes: list[str], *, key: str) -> ClipList:
    """Held-out class indices in the training split's numbering (matched by class name)."""
    if clips.classes == classes or (clips.labels and is_multi_hot(clips.labels[0])):
        if clips.classes != classes:
            raise DataError(f"{key}: its classes differ from the training split's (use the same data.label_csv)")
        return clips
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(clips.classes) - set(lookup))
    if unknown:
        raise DataError(f"{key}: classes {unknown[:10]} do not occur in the training split {classes[:10]}")
    labels = [lookup[clips.classes[y]] for y in clips.labels]
    return ClipList(clips.files, labels, list(classes), clips.folds)


def _is_multi_label(data: AudioDataConfig, train: ClipList) -> bool:
    """``data.multi_label``, or by default whether the list has multi-hot rows (an AudioSet .json)."""
    if data.multi_label is not None:
        return data.multi_label
    return bool(train.labels) and is_multi_hot(train.labels[0])


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
