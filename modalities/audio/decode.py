"""Audio files -> mono 16 kHz float waveforms with PyAV (reference section 4: "mono, 16 kHz, subtract the mean").

PyAV (FFmpeg) reads every container/codec FFmpeg knows: wav, flac, mp3, ogg/vorbis, ogg/opus, m4a/aac, ...
Each decoded frame is converted to planar float32 by PyAV's ``AudioResampler`` (a pure sample-format
conversion: rate and layout unchanged), channels are averaged, and the rate is changed with
``torchaudio.functional.resample``. Why torchaudio for the rate: it is a plain windowed-sinc filter applied to
the whole clip at once, deterministic and identical on every platform and FFmpeg build, with no streaming
delay or flush to handle; libswresample's output depends on the FFmpeg build and its filter state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from anymae.core.data.samples import BadSampleError

__all__ = ["SAMPLE_RATE", "audio_duration", "crop_waveform", "decode_audio", "load_waveform", "roll_mag_augment"]

SAMPLE_RATE = 16_000  # AudioMAE's rate (AudioSet clips are 16 kHz)
CROP_MODES = ("random", "center", "start")


def decode_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Decode the first audio stream of ``path`` -> mono float32 waveform (S,) at ``sample_rate``.

    Channels are averaged (a stereo file becomes (L + R) / 2). Any file PyAV cannot open or decode, or one
    without audio samples, raises :class:`BadSampleError` naming the file.
    """
    path = Path(path)
    with _audio_stream(path) as (container, stream):
        # Sample-format conversion only (rate=None, layout=None keep the source's).
        to_float = av.AudioResampler(format="fltp")
        chunks, rate = [], stream.rate or stream.codec_context.sample_rate
        for frame in container.decode(stream):
            rate = frame.sample_rate
            plain = _as_float(frame)  # PCM / float frames: numpy, without a resampler call per frame
            if plain is not None:
                chunks.append(plain)
                continue
            for out in to_float.resample(frame):
                chunks.append(out.to_ndarray())  # (C, S_frame) float32
        for out in to_float.resample(None):  # flush
            chunks.append(out.to_ndarray())
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise BadSampleError(f"cannot read audio {path}: the audio stream holds no samples")
    if len({c.shape[0] for c in chunks}) != 1:
        raise BadSampleError(f"cannot read audio {path}: the channel count changes inside the stream")
    wave = torch.from_numpy(np.concatenate(chunks, axis=1)).mean(dim=0)  # (S,) channels averaged
    if not torch.isfinite(wave).all():
        raise BadSampleError(f"cannot read audio {path}: decoded samples are not finite")
    if rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(rate), new_freq=sample_rate)
    return wave.float().contiguous()


# Integer sample formats -> the scale libswresample's conversion to float uses (x / 2^(bits - 1)).
_INT_SCALE = {"s16": 1 / 32768, "s32": 1 / 2**31}


def _as_float(frame: av.AudioFrame) -> np.ndarray | None:
    """A frame of 16/32-bit integer or float samples -> (C, S_frame) float32, as ``AudioResampler(format="fltp")``
    converts it (the same scaling); None for other sample formats. A 10 s 16-bit WAV has ~160 frames; skipping a
    resampler call per frame took its decoding from 11.1 to 10.1 ms on one core (``benchmarks.audio_data``)."""
    name = frame.format.name
    base = name.rstrip("p")
    if base not in ("s16", "s32", "flt", "dbl"):
        return None
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()  # planar: (C, S); packed: (1, S * C), samples interleaved
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if base in _INT_SCALE:
        return data.astype(np.float32) * np.float32(_INT_SCALE[base])
    return data.astype(np.float32, copy=False)


def load_waveform(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """``decode_audio`` with the clip's mean removed, as AudioMAE does before the filter bank: (S,)."""
    wave = decode_audio(path, sample_rate=sample_rate)
    return wave - wave.mean()


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in ``path``'s first audio stream, from its header (the stream's, else the container's
    duration); decoded when neither says. Errors as :func:`decode_audio`."""
    path = Path(path)
    with _audio_stream(path) as (container, stream):
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
    return decode_audio(path).shape[0] / SAMPLE_RATE


@contextmanager
def _audio_stream(path: Path) -> Iterator[tuple[Any, Any]]:
    """``path``'s container and first audio stream, open for the block; a file PyAV cannot open, one without an
    audio stream, and PyAV's errors inside the block (decoding) raise :class:`BadSampleError` naming the file."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise BadSampleError(f"cannot read audio {path}: the file has no audio stream")
            yield container, container.streams.audio[0]
    except BadSampleError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise BadSampleError(f"cannot decode audio {path}: {type(exc).__name__}: {exc}") from None


def crop_waveform(
    wave: Tensor, num_samples: int, *, mode: str = "center", generator: torch.Generator | None = None
) -> Tensor:
    """(S,) -> (min(S, num_samples),): a window of ``num_samples`` when the clip is longer, else the clip.

    ``mode``: ``random`` (training), ``center`` (evaluation) or ``start`` (AudioMAE, which keeps the first
    frames). Shorter clips are not padded here: padding happens on the filter-bank frames, as AudioMAE pads.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r} is not one of {', '.join(CROP_MODES)}")
    extra = wave.shape[0] - num_samples
    if extra <= 0:
        return wave
    if mode == "start":
        offset = 0
    elif mode == "center":
        offset = extra // 2
    else:
        offset = int(torch.randint(0, extra + 1, (1,), generator=generator))
    return wave[offset : offset + num_samples]


def roll_mag_augment(wave: Tensor, *, generator: np.random.Generator | None = None) -> Tensor:
    """AudioMAE's ``roll_mag_aug`` (on for its AudioSet-2M pre-training): scale by Beta(10, 10) + 0.5.

    The official code also rolls by ``randint(len(waveform))``, but its waveform is a (1, S) array whose
    ``len`` is 1, so the roll is always 0; the magnitude scaling is what the released models saw.
    """
    mag = generator.beta(10, 10) if generator is not None else np.random.beta(10, 10)  # the engine seeds np.random
    return wave * float(mag + 0.5)
