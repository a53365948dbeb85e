"""Waveform -> normalized log-mel filter bank, exactly as AudioMAE feeds its model (reference section 4).

``torchaudio.compliance.kaldi.fbank`` with htk_compat, no energy, a 25 ms Hanning window, 10 ms shift,
dither 0 and 128 mel bins; the frames are zero-padded at the end or cut to ``target_length`` (1024 frames =
10 s for AudioSet); then ``(fbank - mean) / (2 * std)`` with the dataset's statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchaudio.compliance import kaldi

__all__ = [
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "ESC50_MEAN",
    "ESC50_STD",
    "FRAME_LENGTH_MS",
    "FRAME_SHIFT_MS",
    "SPEECHCOMMANDS_MEAN",
    "SPEECHCOMMANDS_STD",
    "fbank",
    "features",
    "fit_frames",
    "frames_for_samples",
    "normalize",
    "samples_for_frames",
]

# Dataset statistics of the unnormalized fbank (reference section 4; AudioMAE's norm_stats).
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974
ESC50_MEAN, ESC50_STD = -6.6268077, 5.358466
SPEECHCOMMANDS_MEAN, SPEECHCOMMANDS_STD = -6.845978, 5.5654526

FRAME_LENGTH_MS = 25.0  # kaldi default, used by AudioMAE
FRAME_SHIFT_MS = 10.0


def samples_for_frames(num_frames: int, sample_rate: int) -> int:
    """The fewest samples giving ``num_frames`` fbank frames (kaldi ``snip_edges``): 164080 for 1024 at 16 kHz."""
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    return window + (num_frames - 1) * shift


def frames_for_samples(num_samples: int, sample_rate: int) -> int:
    """How many fbank frames ``num_samples`` give (0 when shorter than one 25 ms window)."""
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def fbank(wave: Tensor, *, sample_rate: int, num_mel_bins: int = 128) -> Tensor:
    """wave (S,) with its mean removed -> log-mel filter bank (frames, num_mel_bins), AudioMAE's settings.

    A clip shorter than one 25 ms window gives no frames (the padding in ``fit_frames`` then fills them all).
    """
    if frames_for_samples(wave.shape[-1], sample_rate) == 0:
        return wave.new_zeros(0, num_mel_bins)
    return kaldi.fbank(
        wave.reshape(1, -1),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
    )


def fit_frames(bank: Tensor, target_length: int) -> Tensor:
    """(frames, F) -> (target_length, F): zero rows appended (before normalization), or the first frames kept."""
    missing = target_length - bank.shape[0]
    if missing > 0:
        return F.pad(bank, (0, 0, 0, missing))
    return bank[:target_length]


def normalize(bank: Tensor, *, mean: float, std: float) -> Tensor:
    """AudioMAE's normalization: ``(fbank - mean) / (2 * std)``."""
    return (bank - mean) / (2 * std)


def features(
    wave: Tensor, *, sample_rate: int, num_mel_bins: int, target_length: int, mean: float, std: float
) -> Tensor:
    """wave (S,) -> the model input (1, target_length, num_mel_bins): fbank, pad/cut, normalize."""
    bank = fit_frames(fbank(wave, sample_rate=sample_rate, num_mel_bins=num_mel_bins), target_length)
    return normalize(bank, mean=mean, std=std).unsqueeze(0).to(torch.float32)  # (1, T, F)
