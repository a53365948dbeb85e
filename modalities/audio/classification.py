"""Labelled audio for fine-tuning, linear probing and evaluation, with AudioMAE's fine-tuning augmentation.

One training item follows AudioMAE's ``AudiosetDataset.__getitem__`` (its ``dataset.py``, itself AST's):

1. decode to mono 16 kHz, remove the mean, take the time window (``crop``), optionally scale the magnitude
   (``roll_mag_aug``);
2. with probability ``mixup``: mix with a uniformly drawn partner clip in the waveform domain (partner cut or
   zero-padded to this clip's length, lambda ~ Beta(10, 10), mean removed again) and mix the labels with the
   same lambda (``lam * y1 + (1 - lam) * y2``), so labels become soft and the dataset is multi-label;
3. Kaldi fbank, padded/cut to ``target_length`` frames;
4. SpecAugment on the *unnormalized* fbank seen as ``(1, F, T)`` (AudioMAE transposes it to torchaudio's
   ``(..., freq, time)``): one ``FrequencyMasking(freqm)`` stripe, then one ``TimeMasking(timem)`` stripe, each
   of width ``uniform[0, param)`` filled with 0 (so a stripe reads ``-mean / (2 std)`` after normalization);
5. ``(fbank - mean) / (2 std)``;
6. ``noise`` (AudioMAE's Speech Commands option): add ``U(0, 1) * U(0, 1) / 10`` noise and roll the frames by
   ``randint(-10, 10)`` along time.

The linear-probe recipe keeps step 1's random window only (anymae's choice: the frozen-feature probe of MAE
uses weak augmentation); evaluation uses ``eval_crop`` and, with ``eval_views = V > 1``, V windows spread
evenly over the clip, returned as ``(V, 1, T, F)``. Every random draw goes through torch / numpy / ``random``,
which the core seeds per sample, so an item is the same in every worker and on resume.

``sample_weights()`` is AudioMAE's ``gen_weight.py``: label weight ``1000 / (count + 0.01)`` over the training
list, a clip's weight the sum of its labels' weights (for the class-balanced AudioSet-2M sampler).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.transforms as TA
from torch import Tensor

from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

from .data import ClipList, FeatureSettings
from .decode import crop_waveform, load_waveform, roll_mag_augment
from .features import fbank, fit_frames, normalize, samples_for_frames

__all__ = [
    "Augmentation",
    "LabelledClips",
    "balanced_sample_weights",
    "is_multi_hot",
    "positive_classes",
    "spec_augment",
    "view_offsets",
]


@dataclass(frozen=True)
class Augmentation:
    """The training-time options of one recipe (all off: evaluation or the linear probe)."""

    freqm: int = 0  # SpecAugment: widest frequency stripe, in mel bins (AudioSet 48)
    timem: int = 0  # SpecAugment: widest time stripe, in frames (AudioSet 192)
    mixup: float = 0.0  # probability of in-dataset waveform mixup (AudioSet 0.5)
    roll_mag_aug: bool = False  # amplitude x (Beta(10, 10) + 0.5) on each waveform
    noise: bool = False  # AudioMAE's `noise`: small uniform noise + a time roll of up to 10 frames


def spec_augment(bank: Tensor, *, freqm: int, timem: int) -> Tensor:
    """(T, F) unnormalized fbank -> (T, F) with one frequency and one time stripe set to 0 (AudioMAE's order)."""
    spec = bank.transpose(0, 1).unsqueeze(0)  # (1, F, T): torchaudio's (..., freq, time)
    if freqm:
        spec = TA.FrequencyMasking(freqm)(spec)
    if timem:
        spec = TA.TimeMasking(timem)(spec)
    return spec.squeeze(0).transpose(0, 1)  # (T, F)


def view_offsets(num_samples: int, window: int, views: int) -> list[int]:
    """Start samples of ``views`` windows of ``window`` samples spread evenly from the start to the end of a clip
    of ``num_samples`` (all 0 for a clip of at most one window)."""
    extra = max(num_samples - window, 0)
    return [round(extra * v / (views - 1)) for v in range(views)] if views > 1 else [extra // 2]


def balanced_sample_weights(labels: Sequence[Any], num_classes: int) -> list[float]:
    """AudioMAE's ``gen_weight``: per-class weight ``1000 / (count + 0.01)``, per-clip the sum over its labels.

    ``labels``: class indices, tuples of class indices or multi-hot rows (a positive is a value above 0.5)."""
    positives = [positive_classes(y) for y in labels]
    counts = np.zeros(num_classes)
    for classes in positives:
        counts[list(classes)] += 1
    label_weight = 1000.0 / (counts + 0.01)
    return [float(label_weight[list(classes)].sum()) for classes in positives]


def is_multi_hot(label: Any) -> bool:
    """Whether a list label is multi-label: a (K,) row or a tuple of class indices (not an int)."""
    return isinstance(label, (Tensor, tuple))


def positive_classes(label: Any) -> tuple[int, ...]:
    """A list label (int, tuple of indices, or multi-hot row) -> its classes, sorted."""
    if isinstance(label, Tensor):
        return tuple(torch.nonzero(label > 0.5).flatten().tolist())
    if isinstance(label, tuple):
        return tuple(sorted(label))
    return (int(label),)


class LabelledClips(DatasetWithTraits):
    """``(fbank input, label)`` items over a labelled :class:`ClipList`.

    ``multi_label``: labels are float rows ``(K,)`` (multi-hot, soft after mixup) and the core trains with BCE;
    else class indices. ``crop``: the time window of a longer clip (``random``/``center``/``start``);
    ``views > 1`` replaces it by evenly spread windows, inputs ``(V, 1, T, F)``.
    """

    def __init__(
        self,
        clips: ClipList,
        *,
        settings: FeatureSettings,
        multi_label: bool,
        crop: str,
        augmentation: Augmentation = Augmentation(),
        views: int = 1,
        repeats: int = 1,
    ) -> None:
        if clips.labels is None:
            raise DataError("labelled audio needs a list with labels (class folders, a 'path label' list or JSON)")
        if augmentation.mixup > 0 and not multi_label:
            raise DataError(
                f"data.mixup={augmentation.mixup} mixes labels into soft targets, which needs multi-label data "
                "(an AudioSet .json, or data.multi_label: true); for single-label data use finetune.mixup"
            )
        if views > 1 and augmentation != Augmentation():
            raise ValueError("multi-view inputs are for evaluation; training takes one window per item")
        self.clips = clips
        self.classes = list(clips.classes)
        self.multi_label = multi_label
        pairs = zip(clips.labels, clips.files, strict=True)
        # Compact per clip (a tuple of classes, or an int); target() builds the (K,) row of an item.
        self.labels = [_label(y, multi_label, path) for y, path in pairs]
        self.settings, self.crop, self.augmentation, self.repeats = settings, crop, augmentation, repeats
        self.num_views = views
        self.num_samples = samples_for_frames(settings.target_length, settings.sample_rate)

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(
            classes=tuple(self.classes),
            multi_label=self.multi_label,
            num_views=self.num_views,
            sample_weights=self.sample_weights,
        )

    def __len__(self) -> int:
        return len(self.clips.files) * self.repeats

    def sample_weights(self) -> list[float]:
        """One weight per item for the class-balanced sampler (``finetune.balanced_sampling``)."""
        return balanced_sample_weights(self.labels, len(self.classes)) * self.repeats

    def target(self, i: int) -> Tensor | int:
        """Clip ``i``'s label as the core takes it: a float multi-hot row (K,), or a class index."""
        if not self.multi_label:
            return self.labels[i]
        row = torch.zeros(len(self.classes))
        row[list(self.labels[i])] = 1.0
        return row

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        i = index % len(self.clips.files)
        if self.num_views > 1:
            return self._views(i), self.target(i)
        aug = self.augmentation
        wave = self._window(i)
        label = self.target(i)
        if aug.mixup > 0 and random.random() < aug.mixup:  # AudioMAE draws the partner uniformly
            j = random.randrange(len(self.clips.files))
            wave, lam = _mix(wave, self._window(j))
            label = lam * label + (1 - lam) * self.target(j)
        bank = self._fbank(wave)  # (T, F), unnormalized
        if aug.freqm or aug.timem:
            bank = spec_augment(bank, freqm=aug.freqm, timem=aug.timem)
        x = normalize(bank, mean=self.settings.mean, std=self.settings.std)
        if aug.noise:
            x = x + torch.rand(x.shape) * float(np.random.rand()) / 10
            x = torch.roll(x, int(np.random.randint(-10, 10)), dims=0)  # along time
        return self._checked(x.unsqueeze(0).to(torch.float32), i), label  # (1, T, F)

    def _window(self, i: int) -> Tensor:
        """File ``i`` -> its waveform window (S,), magnitude-augmented when asked."""
        wave = load_waveform(self.clips.files[i], sample_rate=self.settings.sample_rate)  # (S,), mean removed
        wave = crop_waveform(wave, self.num_samples, mode=self.crop)
        return roll_mag_augment(wave) if self.augmentation.roll_mag_aug else wave

    def _views(self, i: int) -> Tensor:
        """File ``i`` -> ``num_views`` evenly spread windows (V, 1, T, F), no augmentation."""
        s = self.settings
        wave = load_waveform(self.clips.files[i], sample_rate=s.sample_rate)
        views = []
        for start in view_offsets(wave.shape[0], self.num_samples, self.num_views):
            bank = self._fbank(wave[start : start + self.num_samples])  # (T, F)
            views.append(normalize(bank, mean=s.mean, std=s.std).unsqueeze(0))
        return self._checked(torch.stack(views).to(torch.float32), i)  # (V, 1, T, F)

    def _fbank(self, wave: Tensor) -> Tensor:
        """(S,) -> the unnormalized fbank padded/cut to target_length frames (T, F)."""
        s = self.settings
        return fit_frames(fbank(wave, sample_rate=s.sample_rate, num_mel_bins=s.num_mel_bins), s.target_length)

    def _checked(self, x: Tensor, i: int) -> Tensor:
        if not torch.isfinite(x).all():
            raise BadSampleError(f"audio {self.clips.files[i]} gives non-finite filter-bank values")
        return x


def _mix(wave: Tensor, partner: Tensor) -> tuple[Tensor, float]:
    """AudioMAE's waveform mixup: the partner cut or zero-padded to ``wave``'s length, lambda ~ Beta(10, 10)."""
    if partner.shape[0] < wave.shape[0]:
        partner = F.pad(partner, (0, wave.shape[0] - partner.shape[0]))
    partner = partner[: wave.shape[0]]
    lam = float(np.random.beta(10, 10))
    mixed = lam * wave + (1 - lam) * partner
    return mixed - mixed.mean(), lam


def _label(label: Any, multi_label: bool, path: Any) -> tuple[int, ...] | int:
    """A list label -> the compact form: a tuple of classes for multi-label data, else a class index."""
    classes = positive_classes(label)
    if multi_label:
        return classes
    if len(classes) != 1:
        raise DataError(
            f"data.multi_label is false but {path} has {len(classes)} labels (classes {list(classes[:5])}); "
            "single-label training needs exactly one per clip"
        )
    return classes[0]
