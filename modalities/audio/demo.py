"""The demo sounds: chirps, tone sequences and noise bursts, generated deterministically at first use.

``data.root: builtin:demo_sounds`` resolves to ``$XDG_CACHE_HOME/anymae/demo_sounds-v3`` (default
``~/.cache/anymae/...``), written once (into a temporary folder, then renamed, so an interrupted run never
leaves half a data set) as 16-bit 16 kHz mono WAV files in ``train/<class>/`` and, flat, ``heldout/``, with
``heldout.csv`` listing each held-out clip's class (``heldout/000_chirp.wav chirp``) for the labelled demos
(``demo_audio_finetune``, ``demo_audio_linprobe``).
"""

from __future__ import annotations

import os
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from anymae.core.data.files import generate_once

__all__ = [
    "BUILTIN_DEMO_ROOT",
    "CLASSES",
    "DEMO_ROOTS",
    "demo_sounds_dir",
    "demo_sounds_root",
    "generate_demo_sounds",
    "resolve_root",
]

BUILTIN_DEMO_ROOT = "builtin:demo_sounds"
VERSION = "v3"  # bump when the generator or the layout changes: a new cache folder is written
CLASSES = ("chirp", "tones", "noise_bursts")
RATE = 16_000
DURATION_S = 4.0


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    env[:attack] = np.linspace(0, 1, attack)
    env[n - release :] = np.linspace(1, 0, release)
    return env


def _chirp(rng: np.random.Generator, n: int) -> np.ndarray:
    """2-4 harmonic sweeps (exponential, three harmonics) between random frequencies in 150 Hz - 2.5 kHz."""
    out = np.zeros(n)
    for _ in range(int(rng.integers(2, 5))):
        length = int(rng.integers(n // 4, n // 2))
        start = int(rng.integers(0, n - length + 1))
        f0, f1 = np.exp(rng.uniform(np.log(150), np.log(2500), size=2))
        t = np.arange(length) / RATE
        duration = length / RATE
        # phase of an exponential sweep f(t) = f0 * (f1/f0)^(t/duration)
        k = np.log(f1 / f0) / duration
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k if abs(k) > 1e-9 else 2 * np.pi * f0 * t
        sweep = sum(np.sin(h * phase) / h for h in (1, 2, 3))
        out[start : start + length] += sweep * _envelope(length, 400, 800)
    return out


def _tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """A melody of harmonic notes (fundamental 110-880 Hz, five harmonics), each 0.25-0.6 s."""
    out = np.zeros(n)
    pos = int(rng.integers(0, RATE // 4))
    while pos < n:
        length = min(int(rng.uniform(0.25, 0.6) * RATE), n - pos)
        f0 = 110 * 2 ** (rng.integers(0, 37) / 12)  # a semitone of three octaves
        t = np.arange(length) / RATE
        note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 4, 5))
        out[pos : pos + length] += note * _envelope(length, min(160, length), min(1600, length))
        pos += length + int(rng.integers(0, RATE // 8))
    return out / 1.5


def _noise_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """4-8 bursts of band-limited noise with an exponential decay."""
    out = np.zeros(n)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    for _ in range(int(rng.integers(4, 9))):
        length = int(rng.uniform(0.1, 0.5) * RATE)
        start = int(rng.integers(0, n - length))
        low = rng.uniform(100, 4000)
        band = (freqs >= low) & (freqs <= low * rng.uniform(1.5, 4.0))
        spectrum = np.fft.rfft(rng.standard_normal(n)) * band
        noise = np.fft.irfft(spectrum, n)[:length]
        noise /= np.abs(noise).max() + 1e-9
        out[start : start + length] += noise * np.exp(-np.arange(length) / (length / 4))
    return out


GENERATORS = {"chirp": _chirp, "tones": _tones, "noise_bursts": _noise_bursts}


def _write_wav(path: Path, signal: np.ndarray) -> None:
    pcm = np.clip(signal, -1, 1)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes((pcm * 32767).round().astype("<i2").tobytes())


def generate_demo_sounds(
    root: str | Path, *, train_per_class: int = 32, heldout_per_class: int = 4, seed: int = 0
) -> Path:
    """Write the demo set into ``root`` (train/<class>/*.wav, heldout/NNN_<class>.wav, heldout.csv); returns
    ``root``."""
    root = Path(root)
    n = int(DURATION_S * RATE)
    listing = []
    for split, count, offset in (("train", train_per_class, 0), ("heldout", heldout_per_class, 1_000_000)):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                rng = np.random.default_rng([seed, c, offset + i])  # one stream per clip: order-independent
                signal = GENERATORS[name](rng, n)
                signal = signal / (np.abs(signal).max() + 1e-9) * rng.uniform(0.3, 0.9)
                signal += 0.001 * rng.standard_normal(n)  # a faint noise floor, as real recordings have
                # Training clips in class folders; held-out clips flat, named so that classes alternate
                # (the figure shows the first held-out clips).
                path = (
                    root / "train" / name / f"{name}_{i:03d}.wav"
                    if split == "train"
                    else root / split / f"{i:03d}_{name}.wav"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_wav(path, signal)
                if split == "heldout":
                    listing.append(f"{path.relative_to(root).as_posix()} {name}")
    (root / "heldout.csv").write_text("path label\n" + "\n".join(sorted(listing)) + "\n")
    return root


def demo_sounds_dir() -> Path:
    """Where the demo set lives: ``$XDG_CACHE_HOME/anymae/demo_sounds-<VERSION>`` (``~/.cache`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "anymae" / f"demo_sounds-{VERSION}"


def resolve_root(root: str) -> Path:
    """``builtin:demo_sounds`` -> the generated demo folder (written on first use); else a filesystem path."""
    return DEMO_ROOTS[root]() if root in DEMO_ROOTS else Path(root).expanduser()


def demo_sounds_root() -> Path:
    """The demo set, generated on first use (a ``COMPLETE`` file marks a finished one)."""
    return generate_once(demo_sounds_dir(), _write_complete, complete=lambda target: (target / "COMPLETE").is_file())


def _write_complete(staging: Path) -> None:
    generate_demo_sounds(staging)
    (staging / "COMPLETE").write_text("generated by anymae.modalities.audio.demo\n")


def _demo_audiovisual_root() -> Path:
    """The video plugin's audio-visual demo set, whose .mp4 sound tracks the audio plugin reads too."""
    # Imported here: importing the audio plugin must not import the video plugin.
    from anymae.modalities.video.audiovisual_demo import demo_audiovisual_root

    return demo_audiovisual_root()


AUDIOVISUAL_DEMO_ROOT = "builtin:demo_audiovisual"  # = anymae.modalities.video.audiovisual_demo's, not imported
DEMO_ROOTS: dict[str, Callable[[], Path]] = {
    BUILTIN_DEMO_ROOT: demo_sounds_root,
    AUDIOVISUAL_DEMO_ROOT: _demo_audiovisual_root,
}
