"""The audio-visual demo (``builtin:demo_audiovisual``): one .mp4 both plugins decode, whose pitch follows the
disc's height."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from anymae.modalities.audio import demo as audio_demo
from anymae.modalities.audio.decode import decode_audio
from anymae.modalities.video import audiovisual_demo as av_demo
from anymae.modalities.video import demo as video_demo
from anymae.modalities.video.audiovisual_demo import (
    AUDIOVISUAL_DEMO_ROOT,
    make_audiovisual_clip,
    write_audiovisual_clip,
)
from anymae.modalities.video.decode import probe_video, read_clips, read_clips_at

FRAMES, FPS, RATE, H = 32, 10, 16_000, 32
SAMPLES = 51_200  # 3.2 s at 16 kHz


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three clips written with the demo's writer -> [(path, frames, wave, heights)]."""
    folder = tmp_path_factory.mktemp("audiovisual")
    out = []
    for seed in (0, 7, 42):
        frames, wave, heights = make_audiovisual_clip(seed)
        path = write_audiovisual_clip(folder / f"clip{seed:04d}.mp4", frames, wave, fps=FPS, sample_rate=RATE)
        out.append((path, frames, wave, heights))
    return out


def _dominant_hz(wave: np.ndarray, centre: int, *, window: int = 800, pad: int = 16_384) -> float:
    """Peak of the spectrum of a Hann-windowed ``window``-sample (50 ms) stretch around ``centre``."""
    start = min(max(centre - window // 2, 0), len(wave) - window)
    spectrum = np.abs(np.fft.rfft(wave[start : start + window] * np.hanning(window), pad))
    return float(np.fft.rfftfreq(pad, 1 / RATE)[np.argmax(spectrum)])


def _every_frame(path) -> np.ndarray:
    """All frames (T, H, W, 3). Not ``read_clips(num_frames=T, sampling_rate=1)``: VideoMAE's indexing never steps
    onto a file's last frame, so that clip would end with frame T - 2 twice."""
    return read_clips_at(path, lambda grid: [list(range(grid))])[0]


def test_clip_has_declared_shapes_and_is_deterministic_by_seed():
    frames, wave, heights = make_audiovisual_clip(3)
    assert frames.shape == (FRAMES, H, 32, 3) and frames.dtype == np.uint8
    assert wave.shape == (SAMPLES,) and wave.dtype == np.float32 and np.abs(wave).max() < 1
    assert heights.shape == (FRAMES,) and np.ptp(heights) > 4  # the disc moves vertically
    again = make_audiovisual_clip(3)
    assert all(np.array_equal(a, b) for a, b in zip((frames, wave, heights), again, strict=True))
    assert not np.array_equal(frames, make_audiovisual_clip(4)[0])


def test_written_clip_decodes_with_the_video_and_the_audio_plugin(clips):
    for path, frames, wave, _ in clips:
        timeline = probe_video(path)
        assert len(timeline.times) == FRAMES and timeline.fps == pytest.approx(FPS)
        decoded = _every_frame(path)
        assert decoded.shape == frames.shape
        # The plugin's own sampler reads 16-frame clips at rate 2 (frames 0, 2, ..., 30) of the 32.
        assert read_clips(path, num_frames=16, sampling_rate=2, mode="uniform").shape == (1, 16, H, 32, 3)
        assert np.abs(decoded.astype(np.int16) - frames).mean() < 6, path  # lossy, but the same picture
        sound = decode_audio(path, sample_rate=RATE).numpy()
        assert abs(len(sound) - SAMPLES) <= 1024, len(sound)  # at most one AAC frame of padding
        # The encoder's priming is trimmed (the mp4 edit list): the decoded sound lines up with the written one.
        n = min(len(sound), SAMPLES)
        assert np.corrcoef(sound[:n], wave[:n])[0, 1] > 0.95


def test_decoded_pitch_follows_the_disc_height(clips):
    """The FFT peak of 50 ms of decoded sound in each frame vs. the demo's stated mapping, written out here: the
    bottom row (31) sounds 200 Hz, the top row (0) 3200 Hz, log-linear in between (4 octaves over 31 rows)."""
    for path, _, _, heights in clips:
        sound = decode_audio(path, sample_rate=RATE).numpy()
        # At the middle of each frame: the disc jumps (and the pitch with it) between frames.
        measured = np.array([_dominant_hz(sound, round((f + 0.5) / FPS * RATE)) for f in range(FRAMES)])
        expected = 200.0 * 2.0 ** (4 * (31 - np.asarray(heights, dtype=np.float64)) / 31)
        assert np.abs(np.log2(measured / expected)).max() < 1 / 24, (path.name, measured, expected)  # < 1/4 tone


def test_the_picture_shows_the_disc_height(clips):
    """The bright disc's row (centroid of its pixels in the decoded frames) is the height the pitch encodes."""
    for path, _, _, heights in clips:
        decoded = _every_frame(path)
        bright = decoded.max(axis=-1) > 140  # (T, H, W): the disc (>= 0.6 of full scale); background < 0.25
        rows = np.arange(H)[None, :, None]
        centroid = (bright * rows).sum(axis=(1, 2)) / bright.sum(axis=(1, 2))
        assert np.abs(centroid - heights).max() < 1.0, path.name


def test_demo_root_writes_the_layout_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYMAE_CACHE", str(tmp_path))
    monkeypatch.setattr(av_demo, "NUM_TRAIN", 2)
    monkeypatch.setattr(av_demo, "NUM_HELDOUT", 1)
    root = video_demo.DEMO_ROOTS[AUDIOVISUAL_DEMO_ROOT]()
    assert root == tmp_path / "demo_audiovisual-v5"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4")) == [
        "heldout/clip0002.mp4",
        "train/clip0000.mp4",
        "train/clip0001.mp4",
    ]
    assert audio_demo.DEMO_ROOTS[AUDIOVISUAL_DEMO_ROOT]() == root  # the audio plugin resolves the same folder
    assert [p.name for p in tmp_path.iterdir()] == ["demo_audiovisual-v5"]  # no staging folder left behind


def test_audio_plugin_does_not_import_the_video_plugin():
    code = (
        "import sys, anymae.modalities.audio.demo\n"
        "sys.exit(any(m.startswith('anymae.modalities.video') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
