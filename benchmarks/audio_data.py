"""Per-process audio pre-training input rate (issue 20): decode + resample + fbank, by file type.

Writes 10-second clips (a chirp over noise) as 16 kHz mono WAV, 16 kHz mono FLAC, 44.1 kHz stereo MP3 and 48 kHz
stereo M4A (AAC), then times, interleaved in one run and on one thread (a DataLoader worker's share):

- ``decode``: PyAV decoding to float, channels averaged (``decode_audio`` without the rate change);
- ``resample``: ``torchaudio.functional.resample`` to 16 kHz (only for files not at 16 kHz);
- ``fbank``: the 1024 x 128 Kaldi filter bank (``torchaudio.compliance.kaldi.fbank``), pad/cut, normalize;
- ``item``: anymae's AudioMAE pre-training item (all of the above, a random 10.24 s window).

    python -m benchmarks.audio_data --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from anymae.modalities.audio.decode import SAMPLE_RATE, decode_audio
from anymae.modalities.audio.encode import encode_audio
from anymae.modalities.audio.features import features

from .common import markdown_table, report

SECONDS = 10
FORMATS = {"wav": (16_000, 1), "flac": (16_000, 1), "mp3": (44_100, 2), "m4a": (48_000, 2)}


def write_clips(folder: Path, kind: str, count: int) -> list[Path]:
    """``count`` 10 s clips of one file type under ``folder/<kind>/train/``."""
    rate, channels = FORMATS[kind]
    out = folder / kind / "train"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(rate * SECONDS) / rate
    paths = []
    for i in range(count):
        path = out / f"clip{i:03d}.{kind}"
        paths.append(path)
        if not path.is_file():
            wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t * (1 + t / SECONDS)) + 0.05 * rng.normal(size=t.size)
            encode_audio(path, np.stack([wave] * channels).astype(np.float32), sample_rate=rate)
    return paths


def stages(path: Path) -> dict[str, float]:
    """Seconds of each stage for one file."""
    import av

    times = {}
    begin = time.perf_counter()
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
    wave = decode_audio(path, sample_rate=rate)  # decode only: no rate change
    times["decode"] = time.perf_counter() - begin
    begin = time.perf_counter()
    if rate != SAMPLE_RATE:
        wave = AF.resample(wave, orig_freq=rate, new_freq=SAMPLE_RATE)
    times["resample"] = time.perf_counter() - begin
    begin = time.perf_counter()
    features(wave - wave.mean(), sample_rate=SAMPLE_RATE, num_mel_bins=128, target_length=1024, mean=0.0, std=1.0)
    times["fbank"] = time.perf_counter() - begin
    return times


def item_dataset(files: list[Path]):
    """anymae's AudioMAE pre-training dataset (10.24 s random windows, 1024 x 128 fbank) over ``files``."""
    from anymae.core.config import from_dict
    from anymae.plugins import get_registry

    modality = get_registry().modality("audio")
    data = from_dict(modality.data_config, {"root": str(files[0].parent.parent), "heldout_split": None}, "data")
    tokenizer = from_dict(modality.tokenizer_config, {}, "model.tokenizer")
    return modality.build_dataset(data, tokenizer, split="train")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/anymae-audio-bench"))
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="", help="a name for this code state (before/after): a section each")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = {kind: write_clips(args.folder, kind, args.files) for kind in FORMATS}
    datasets = {kind: item_dataset(paths) for kind, paths in files.items()}
    ms: dict[str, dict[str, list[float]]] = {k: {"decode": [], "resample": [], "fbank": [], "item": []} for k in files}
    for _ in range(args.rounds):  # interleaved: every file type in every round
        for kind, paths in files.items():
            for path in paths:
                for stage, seconds in stages(path).items():
                    ms[kind][stage].append(1000 * seconds)
            begin = time.perf_counter()
            for i in range(len(paths)):
                datasets[kind][i]
            ms[kind]["item"].append(1000 * (time.perf_counter() - begin) / len(paths))
    rows = []
    for kind, values in ms.items():
        rate, channels = FORMATS[kind]
        med = {stage: statistics.median(v) for stage, v in values.items()}
        cells = [f"{med[stage]:.1f}" for stage in ("decode", "resample", "fbank", "item")]
        rows.append([f"{kind} ({rate / 1000:g} kHz, {channels} ch)", *cells, f"{1000 / med['item']:.0f}"])
    header = ["file", "decode (ms)", "resample to 16 kHz (ms)", "fbank, pad, normalize (ms)", "item (ms)", "items/s"]
    title = f"### Audio pre-training input, one thread: {SECONDS} s clips, AudioMAE's 1024 x 128 fbank"
    section = f"audio_data-{args.label}" if args.label else "audio_data"
    report(f"{title} ({args.label or 'this code'})", markdown_table(header, rows), script=section, results=args.results)


if __name__ == "__main__":
    main()
