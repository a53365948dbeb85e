"""``builtin:demo_audiovisual``: short clips whose sound and picture tell the same thing, for a joint video + audio
MAE demo; generated once, deterministically, at first use.

Each clip is 3.2 s: 32 frames of 32x32 RGB at 10 fps and a mono 16 kHz sound track, both in one ``.mp4``
(H.264, or MPEG-4 part 2 when this FFmpeg has no libx264, and AAC). The picture is a dark background with a faint,
slowly drifting texture (something for a video MAE to predict, unrelated to the sound) and one bright disc that
jumps to a new random place after 1.6 s. The sound is a pure tone whose pitch follows the disc's height,
``f = 200 Hz * 2 ** (4 * (1 - y / (H - 1)))`` (top 3200 Hz, bottom 200 Hz), in silence.
So the sound says where the disc is vertically and the picture says the pitch: a model that masks one
modality can fill it in from the other, which neither the video nor the audio demo can show.

Written into ``$ANYMAE_CACHE`` (default ``~/.cache/anymae``)/``demo_audiovisual-v5``, ``train/`` (160 clips)
and ``heldout/`` (16), ``clipNNNN.mp4`` numbered by seed; a temporary folder is renamed into place so a
half-written set is never used.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from anymae.core.data.files import cache_dir, generate_once

from .decode import _h264, _rate

__all__ = [
    "AUDIOVISUAL_DEMO_ROOT",
    "demo_audiovisual_root",
    "make_audiovisual_clip",
    "pitch_of_height",
    "write_audiovisual_clip",
]

AUDIOVISUAL_DEMO_ROOT = "builtin:demo_audiovisual"
VERSION = "v5"  # bump when the generator changes, so old caches are not reused
SIZE = (32, 32)  # H, W
FRAMES, FPS = 32, 10  # 3.2 s
RATE = 16_000  # AudioMAE's rate
NUM_TRAIN, NUM_HELDOUT = 160, 16
LOW_HZ, OCTAVES = 200.0, 4  # bottom of the frame -> 200 Hz, top -> 3200 Hz
# A pure tone in silence: faint noise or harmonics give the spectrogram a texture that is most of a masked
# band's loss and cannot be predicted from anything, so it hides what the video adds (measured: under 0.3%).
AMPLITUDE, NOISE = 0.5, 0.0
HARMONICS, MAX_HZ = 1, 7000.0  # harmonics k = 1..HARMONICS at amplitude 1/k, none above MAX_HZ
# The disc rests at a random place for NOTE_FRAMES frames (1.6 s), then jumps to another, and the tone follows: no
# stream can extrapolate the second place from the first (straight-line motion each stream predicts alone).
NOTE_FRAMES = 16
AUDIO_FRAME = 1024  # samples per AAC frame


def pitch_of_height(y: np.ndarray, height: int) -> np.ndarray:
    """Frequency in Hz of the tone for a disc centre at row ``y`` (0 = top) of a ``height``-row frame."""
    return LOW_HZ * 2.0 ** (OCTAVES * (1.0 - np.asarray(y, dtype=np.float64) / (height - 1)))


def make_audiovisual_clip(
    seed: int,
    *,
    size: tuple[int, int] = SIZE,
    frames: int = FRAMES,
    fps: float = FPS,
    sample_rate: int = RATE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip number ``seed`` -> (video uint8 (T, H, W, 3), wave float32 (S,), heights float64 (T,)).

    ``heights[t]`` is the disc centre's row in frame ``t``; ``S = round(T / fps * sample_rate)``. The disc
    rests at a random place for ``NOTE_FRAMES`` frames, then jumps to another; the tone's frequency is
    :func:`pitch_of_height` of the height of the frame on screen at each sample, with a continuous phase (the
    integral of the frequency), so a jump makes no click.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

    # Background: dark, with a faint texture of two crossed sine gratings drifting ~0.3 px a frame.
    base = rng.uniform(0.05, 0.15, size=3).astype(np.float32)
    angles = rng.uniform(0, 2 * np.pi, size=2)
    periods = rng.uniform(6, 12, size=2)
    drifts = rng.uniform(0.15, 0.4, size=2) * rng.choice([-1, 1], size=2)

    # The disc: bright, random colour, a new random place every NOTE_FRAMES frames.
    radius = rng.uniform(4.0, 5.0)
    colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    colour[rng.integers(3)] = 1.0  # at least one saturated channel: bright whatever the draw
    lo, hi = np.array([radius, radius]), np.array([h - 1 - radius, w - 1 - radius])
    notes = rng.uniform(lo, hi, size=(-(-frames // NOTE_FRAMES), 2))  # (notes, 2) places (y, x)
    centres = np.repeat(notes, NOTE_FRAMES, axis=0)[:frames]  # (T, 2)

    video = np.empty((frames, h, w, 3), dtype=np.uint8)
    for f in range(frames):
        texture = sum(
            np.sin((xs * np.cos(a) + ys * np.sin(a) + d * f) * (2 * np.pi / p))
            for a, p, d in zip(angles, periods, drifts, strict=True)
        )
        image = base + 0.03 * texture[..., None]  # (H, W, 3)
        cy, cx = centres[f]
        # Anti-aliased edge (coverage of a one-pixel ramp): sub-pixel motion stays smooth.
        cover = np.clip(radius + 0.5 - np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2), 0, 1)[..., None]
        image = image * (1 - cover) + colour * cover
        video[f] = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)

    num_samples = round(frames / fps * sample_rate)
    t = np.arange(num_samples) / sample_rate
    y = centres[np.minimum((t * fps).astype(int), frames - 1), 0]  # (S,) the height on screen at every sample
    pitch = pitch_of_height(y, h)  # (S,)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    weights = [(k * pitch < MAX_HZ) / k for k in range(1, HARMONICS + 1)]  # (S,) each: no harmonic above MAX_HZ
    tone = sum(w * np.sin(k * phase) for k, w in enumerate(weights, start=1)) / sum(1 / k for k in range(1, 5))
    wave = AMPLITUDE * tone + NOISE * rng.standard_normal(num_samples)
    return video, wave.astype(np.float32), centres[:, 0].copy()


def write_audiovisual_clip(
    path: str | Path, frames: np.ndarray, wave: np.ndarray, *, fps: float = FPS, sample_rate: int = RATE
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) and a mono float wave (S,) into one file: H.264 (MPEG-4 part 2
    without libx264, as :func:`~anymae.modalities.video.decode.write_video`) and AAC (FFmpeg's native encoder).

    Packets are muxed in time order (the audio up to each frame's time before that frame), so a player or
    a decoder reading both streams never waits on a long run of the other stream.
    """
    path = Path(path)
    frames, wave = np.asarray(frames), np.asarray(wave, dtype=np.float32)
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # 4:2:0 needs even sizes
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        codec = _h264()
        video = container.add_stream(codec, rate=_rate(fps))
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            video.options = {"crf": "18", "preset": "veryfast"}
        audio = container.add_stream("aac", rate=sample_rate, layout="mono")
        audio.bit_rate = 96_000  # ample for one tone; FFmpeg's default (128k) would do too
        sent = 0
        for f, image in enumerate(frames):
            upto = min(round(f / fps * sample_rate), len(wave))
            sent = _encode_audio(container, audio, wave, sent, upto, sample_rate)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="rgb24")
            container.mux(video.encode(frame.reformat(format="yuv420p")))
        _encode_audio(container, audio, wave, sent, len(wave), sample_rate)
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


def _encode_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    wave: np.ndarray,
    start: int,
    stop: int,
    sample_rate: int,
) -> int:
    """Encode ``wave[start:stop]`` in frames of :data:`AUDIO_FRAME` samples (the last may be shorter only at the
    end of the wave); returns the first sample not yet encoded."""
    while start + AUDIO_FRAME <= stop or (stop == len(wave) and start < stop):
        chunk = wave[start : start + AUDIO_FRAME]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
        start += len(chunk)
    return start


def _complete(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "heldout").is_dir()


def _write_all(staging: Path) -> None:
    for seed in range(NUM_TRAIN + NUM_HELDOUT):
        split = "train" if seed < NUM_TRAIN else "heldout"
        video, wave, _ = make_audiovisual_clip(seed)
        write_audiovisual_clip(staging / split / f"clip{seed:04d}.mp4", video, wave, fps=FPS, sample_rate=RATE)


def demo_audiovisual_root() -> Path:
    """The cached audio-visual demo set (``train/``, ``heldout/``), generated on first call."""
    return generate_once(cache_dir() / f"demo_audiovisual-{VERSION}", _write_all, complete=_complete)
