"""The fbank mean and std of a custom data set, for ``data.mean`` / ``data.std``.

AudioMAE normalizes with ``(fbank - mean) / (2 * std)`` using statistics measured on the training set's
*unnormalized* filter banks, as the model sees them: mean removed, cut or zero-padded to ``target_length``
frames (AST's ``get_norm_stats``, which AudioMAE's values come from). Here every value of every clip counts
once: the mean and the (unbiased) std over all clips' frames and bins, accumulated in float64.

    python -m anymae.modalities.audio.stats /data/my_sounds/train --target-length 1024
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .data import read_clip_list
from .decode import SAMPLE_RATE, crop_waveform, load_waveform
from .features import fbank, fit_frames, samples_for_frames

__all__ = ["AudioStatsCommand", "fbank_stats", "main"]


def fbank_stats(
    files: Iterable[str | Path],
    *,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = 128,
    target_length: int = 1024,
    crop: str = "center",
) -> tuple[float, float]:
    """(mean, std) of the unnormalized, padded/cut fbank of ``files`` (a BadSampleError names a bad file)."""
    total = total_sq = 0.0
    count = 0
    num_samples = samples_for_frames(target_length, sample_rate)
    for path in files:
        wave = crop_waveform(load_waveform(path, sample_rate=sample_rate), num_samples, mode=crop)
        bank = fit_frames(fbank(wave, sample_rate=sample_rate, num_mel_bins=num_mel_bins), target_length).double()
        total += bank.sum().item()
        total_sq += (bank * bank).sum().item()
        count += bank.numel()
    if count < 2:
        raise ValueError("no audio files to measure")
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / (count - 1)
    return mean, math.sqrt(var)


class AudioStatsCommand:
    """``anymae audio-stats DATA``: registered through the ``anymae_register_commands`` hook."""

    help = "fbank mean/std of a custom audio data set (for data.mean / data.std)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The command's arguments (mountable as a subcommand, e.g. ``anymae audio-stats``)."""
        parser.add_argument(
            "data", help="a folder of audio files (class sub-folders or flat), an AudioSet .json or a csv"
        )
        parser.add_argument("--target-length", type=int, default=1024, help="frames per clip (default 1024 = 10 s)")
        parser.add_argument("--num-mel-bins", type=int, default=128, help="mel bins (default 128)")
        parser.add_argument(
            "--sample-rate", type=int, default=SAMPLE_RATE, help="resample to this rate (default 16000)"
        )
        parser.add_argument("--limit", type=int, default=None, help="measure only the first N files of the list")

    def run(self, args: argparse.Namespace) -> int:
        """Print ``data.mean`` / ``data.std`` lines for a config; 0 on success."""
        clips = read_clip_list(Path(args.data).expanduser())
        files = clips.files[: args.limit] if args.limit else clips.files
        mean, std = fbank_stats(
            files, sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins, target_length=args.target_length
        )
        print(f"# fbank statistics of {len(files)} files under {args.data}")
        print("data:")
        print(f"  mean: {mean:.7g}")
        print(f"  std: {std:.7g}")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anymae.modalities.audio.stats", description="fbank mean/std of an audio data set"
    )
    command = AudioStatsCommand()
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except (OSError, ValueError, RuntimeError) as exc:  # DataError/BadSampleError are RuntimeErrors
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
