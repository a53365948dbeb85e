"""Write waveforms to audio files with PyAV (tests, generated data): wav, flac, mp3, ogg/opus, m4a/aac."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from torch import Tensor

__all__ = ["CODECS", "encode_audio"]

# extension -> (codec, sample format the encoder takes, container format)
CODECS = {
    ".wav": ("pcm_s16le", "s16", "wav"),
    ".flac": ("flac", "s16", "flac"),
    ".mp3": ("libmp3lame", "fltp", "mp3"),
    ".ogg": ("libopus", "flt", "ogg"),
    ".opus": ("libopus", "flt", "ogg"),
    ".m4a": ("aac", "fltp", "ipod"),
}


def encode_audio(path: str | Path, wave: Tensor | np.ndarray, *, sample_rate: int) -> Path:
    """Write ``wave`` (S,) or (C, S) in [-1, 1] to ``path``; the extension picks the codec (see ``CODECS``).

    Lossy codecs resample as they must (Opus runs at 48 kHz) and add their own delay and padding.
    """
    path = Path(path)
    if path.suffix.lower() not in CODECS:
        raise ValueError(f"cannot write {path.suffix!r} files; supported: {', '.join(CODECS)}")
    codec, sample_format, container_format = CODECS[path.suffix.lower()]
    data = np.asarray(wave, dtype=np.float32)
    data = data[None] if data.ndim == 1 else data  # (C, S)
    channels = data.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels)
    if layout is None:
        raise ValueError(f"only mono or stereo can be written, got {channels} channels")
    rate = 48_000 if codec == "libopus" and sample_rate not in (8000, 12000, 16000, 24000, 48000) else sample_rate
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        # Hand the encoder float frames at the source rate; its resampler converts format and rate.
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts, frame.time_base = pts, Fraction(1, sample_rate)
            pts += chunk.shape[1]
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    container.mux(packet)
        for converted in resampler.resample(None):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
