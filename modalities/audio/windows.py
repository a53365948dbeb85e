"""A long recording as consecutive model inputs (``anymae embed``): sliding windows over the waveform."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import Tensor

from anymae.core.data.samples import DataError

from .data import FeatureSettings
from .decode import load_waveform
from .features import FRAME_LENGTH_MS, samples_for_frames

__all__ = ["audio_windows"]


def audio_windows(
    path: str | Path, settings: FeatureSettings, *, window: float | None, hop: float | None
) -> Iterator[tuple[float, Tensor]]:
    """(start seconds, fbank input (1, T, F)) for windows of ``window`` seconds every ``hop`` seconds over the whole
    file, in order. Default window: the model's span (``target_length`` frames of 10 ms, 10.24 s for AudioSet's
    1024); default hop: the window. A window shorter than the span is zero-padded as AudioMAE pads a short clip; so
    is the last one, which starts where a hop past the previous one lands as long as the file goes on."""
    rate = settings.sample_rate
    span = samples_for_frames(settings.target_length, rate)
    size = span if window is None else round(window * rate)
    if size > span:
        raise DataError(
            f"--window {window} s is longer than the model's input, {span / rate:.3f} s "
            f"(model.tokenizer.target_length={settings.target_length} frames of 10 ms)"
        )
    if size < rate * FRAME_LENGTH_MS / 1000:
        raise DataError(f"--window {window} s is shorter than one {FRAME_LENGTH_MS:g} ms filter-bank frame")
    step = size if hop is None else round(hop * rate)
    if step < 1:
        raise DataError(f"--hop must be positive, got {hop}")
    wave = load_waveform(path, sample_rate=rate)  # (S,)
    start = 0
    while True:
        x = settings.features(wave[start : start + size])
        yield start / rate, x  # (1, T, F)
        if start + size >= wave.shape[0]:
            return
        start += step
