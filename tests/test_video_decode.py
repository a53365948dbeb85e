"""Decoding with PyAV: containers and codecs, VideoMAE's frame sampling, timestamps, rotation, bad files."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from anymae.core.data.samples import BadSampleError, SafeDataset
from anymae.modalities.video import decode
from anymae.modalities.video.data import VideoClips
from anymae.modalities.video.decode import clip_indices, clip_starts, probe_video, read_clips, write_video


def _coded_frames(count: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame i is a flat grey of value 5 * i: its index can be read back from the mean brightness."""
    return np.stack([np.full((h, w, 3), 5 * i, dtype=np.uint8) for i in range(count)])


def _indices(clips: np.ndarray) -> list[list[int]]:
    return np.rint(clips.reshape(*clips.shape[:2], -1).mean(-1) / 5).astype(int).tolist()


@pytest.mark.parametrize(
    ("name", "codec"),
    [("h264.mp4", None), ("mpeg4.mp4", "mpeg4"), ("vp9.webm", None), ("h264.mkv", None), ("mjpeg.avi", None)],
)
def test_decodes_common_containers_and_codecs(tmp_path, name, codec):
    path = write_video(tmp_path / name, _coded_frames(30), fps=10, codec=codec)
    clips = read_clips(path, num_frames=4, sampling_rate=3, num_clips=2, mode="uniform")
    assert clips.shape == (2, 4, 24, 32, 3) and clips.dtype == np.uint8
    # 30 frames, span 12: starts 0 and 18 (the last start VideoMAE can draw is 30 - 12 = 18).
    assert _indices(clips) == [[0, 3, 6, 9], [18, 21, 24, 27]]


def test_clip_indices_reproduce_videomae_loader_hand_computed():
    # Long enough: plain stride from the start.
    assert clip_indices(100, start=3, num_frames=4, sampling_rate=4) == [3, 7, 11, 15]
    # Shorter than a clip: the offset stops advancing once offset + rate >= duration (1-based offsets),
    # so the clip repeats its last reachable frame; frame 8 of 9 is never stepped onto.
    assert clip_indices(10, start=0, num_frames=5, sampling_rate=4) == [0, 4, 8, 8, 8]
    assert clip_indices(9, start=0, num_frames=5, sampling_rate=4) == [0, 4, 4, 4, 4]
    assert clip_indices(3, start=0, num_frames=4, sampling_rate=1) == [0, 1, 1, 1]


def test_clip_starts_random_in_videomae_range_and_uniform_spread():
    rng = np.random.default_rng(0)
    starts = clip_starts(40, num_frames=4, sampling_rate=4, num_clips=500, mode="random", rng=rng)
    assert min(starts) == 0 and max(starts) == 40 - 16  # randint(F - T*s + 1)
    assert clip_starts(10, num_frames=4, sampling_rate=4, num_clips=3, mode="random", rng=rng) == [0, 0, 0]
    assert clip_starts(40, num_frames=4, sampling_rate=4, num_clips=3, mode="uniform") == [0, 12, 24]
    assert clip_starts(40, num_frames=4, sampling_rate=4, num_clips=1, mode="uniform") == [12]


def test_video_shorter_than_a_clip_decodes_as_videomae_does(tmp_path):
    path = write_video(tmp_path / "short.mp4", _coded_frames(5), fps=10)
    clips = read_clips(path, num_frames=4, sampling_rate=2, mode="random", rng=np.random.default_rng(0))
    assert _indices(clips) == [[0, 2, 2, 2]]


def _write_vfr(path: Path, times_ms: list[int]) -> Path:
    """An MKV whose frames sit at irregular millisecond timestamps; frame i has brightness 5 * i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    times_ms = [0, 100, 200, 500, 550, 600, 700, 1200, 1300, 1400]  # gaps and bursts
    path = _write_vfr(tmp_path / "vfr.mkv", times_ms)
    timeline = probe_video(path)
    assert np.allclose(timeline.times, np.array(times_ms) / 1000)
    clips = read_clips(path, num_frames=4, sampling_rate=2, mode="uniform")
    # Expected: the nominal grid t0 + i/fps, each time showing the last frame that started by then.
    grid = timeline.num_grid_frames
    (start,) = clip_starts(grid, num_frames=4, sampling_rate=2, num_clips=1, mode="uniform")
    expected = []
    for index in clip_indices(grid, start=start, num_frames=4, sampling_rate=2):
        t_ms = 1000 * index / timeline.fps
        expected.append(max(i for i, t in enumerate(times_ms) if t <= t_ms + 1e-6))
    assert _indices(clips) == [expected]
    # By hand: fps 10 -> 15 grid frames, centre start 3 -> times 0.3, 0.5, 0.7, 0.9 s -> frames shown then
    # are 2 (since 0.2 s), 3 (0.5 s), 6 (0.7 s), 6; counting frames instead would give 3, 5, 7, 9.
    assert expected == [2, 3, 6, 6]


def test_display_rotation_is_applied(tmp_path):
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, :8] = 255  # a white band on the left
    path = write_video(tmp_path / "rotated.mp4", np.stack([image] * 4), fps=10, rotation=90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90
    (clip,) = read_clips(path, num_frames=2, sampling_rate=1, mode="uniform")
    upright = np.rot90(image, k=1)  # 90 degrees counter-clockwise: the left band ends at the bottom
    assert clip.shape == (2, 32, 16, 3)
    assert np.abs(clip[0].astype(int) - upright).mean() < 8
    assert clip[0, -4:].mean() > 200 and clip[0, :4].mean() < 50


def test_repeated_sampling_decodes_the_file_once(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", _coded_frames(40), fps=10)
    calls = []
    original = decode._decode_frames
    monkeypatch.setattr(decode, "_decode_frames", lambda *a: calls.append(1) or original(*a))
    clips = read_clips(path, num_frames=4, sampling_rate=2, num_clips=3, rng=np.random.default_rng(1))
    assert clips.shape == (3, 4, 24, 32, 3) and len(calls) == 1
    for clip in _indices(clips):
        assert np.diff(clip).tolist() == [2, 2, 2]


def _bad_files(folder: Path) -> dict[str, Path]:
    good = write_video(folder / "good.mp4", _coded_frames(20), fps=10)
    files = {"zero-byte": folder / "empty.mp4", "text": folder / "notes.mp4", "truncated": folder / "cut.mp4"}
    files["zero-byte"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 20)
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    audio = folder / "audio_only.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    files["audio-only"] = audio
    return files


def test_bad_files_raise_messages_naming_the_file(tmp_path):
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(BadSampleError) as info:
            read_clips(path, num_frames=4, sampling_rate=2)
        assert str(path) in str(info.value), kind
    with pytest.raises(BadSampleError, match="no video stream"):
        read_clips(tmp_path / "audio_only.mp4", num_frames=4, sampling_rate=2)


def test_safe_dataset_warns_and_substitutes_bad_videos(tmp_path):
    bad = _bad_files(tmp_path)
    files = [tmp_path / "good.mp4", *bad.values()]
    dataset = VideoClips(
        files,
        num_frames=4,
        sampling_rate=2,
        transform=lambda frames, rng: __import__("torch").from_numpy(frames.copy()),
        mode="random",
    )
    safe = SafeDataset(dataset, max_bad_fraction=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [safe[i] for i in range(len(files))]
    assert all(item["input"].shape == (4, 24, 32, 3) for item in items)
    assert [item["bad"] for item in items] == [0, 1, 1, 1, 1]  # each bad file replaced by the next good one
    messages = " ".join(str(w.message) for w in caught)
    for path in bad.values():
        assert str(path) in messages


def _h264_with_gop(path: Path, frames: np.ndarray, *, gop: int, bframes: int, fps: int = 25) -> Path:
    """libx264 with a keyframe every ``gop`` frames and up to ``bframes`` B-frames (decode order != display)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": str(bframes), "crf": "20", "sc_threshold": "0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")))
        container.mux(stream.encode())
    return path


def _textured_frames(count: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Moving texture, so P- and B-frames carry real motion and residuals (flat frames would hide a bad seek)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(h, 2 * w, 3), dtype=np.uint8)
    return np.stack([np.roll(texture, 3 * i, axis=1)[:, :w] for i in range(count)])


@pytest.mark.parametrize(("gop", "bframes"), [(8, 0), (8, 3), (250, 3)])
def test_seeking_to_the_keyframe_gives_the_frames_of_a_decode_from_the_start(tmp_path, gop, bframes):
    """Issue 20: clips are decoded from the keyframe at or before their first frame, not from the file's start;
    every frame must equal the one a full decode from the start gives (short and long GOPs, with B-frames)."""
    try:
        av.codec.Codec("libx264", "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip("this FFmpeg build has no libx264")
    path = _h264_with_gop(tmp_path / f"g{gop}b{bframes}.mp4", _textured_frames(60), gop=gop, bframes=bframes)
    timeline = probe_video(path)
    assert len(timeline.keyframes) == (1 if gop >= 60 else len(range(0, 60, gop)))
    with av.open(str(path)) as container:  # the reference: every frame, decoded from the start
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for first in (0, 5, 8, 13, 30, 47):
        wanted = {first, first + 3, first + 9}
        frames = decode._decode_frames(timeline, wanted)
        for position in wanted:
            assert np.array_equal(frames[position], reference[position]), (first, position)


class _CountingContainer:
    """An opened file whose ``demux`` records the pts of every packet it hands to the decoder."""

    def __init__(self, container, seen: list[int]) -> None:
        self.container, self.seen, self.streams = container, seen, container.streams

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def seek(self, *args, **kwargs) -> None:
        self.container.seek(*args, **kwargs)

    def demux(self, *args, **kwargs):
        for packet in self.container.demux(*args, **kwargs):
            if packet.pts is not None:
                self.seen.append(packet.pts)
            yield packet


def test_a_clip_far_into_the_file_is_decoded_from_its_keyframe_not_the_start(tmp_path, monkeypatch):
    try:
        av.codec.Codec("libx264", "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip("this FFmpeg build has no libx264")
    path = _h264_with_gop(tmp_path / "v.mp4", _textured_frames(60), gop=10, bframes=2)
    timeline = probe_video(path)
    seen, converted = [], []
    original_open, original_upright = decode._open, decode._upright
    monkeypatch.setattr(decode, "_open", lambda p: _CountingContainer(original_open(p), seen))
    monkeypatch.setattr(decode, "_upright", lambda frame: converted.append(frame.pts) or original_upright(frame))
    decode._decode_frames(timeline, {52, 55})
    assert timeline.seek_point(int(timeline.pts[52])) == int(timeline.pts[50])  # the keyframe at frame 50
    assert min(seen) == int(timeline.pts[50]) and len(seen) <= 10  # reading began there, not at frame 0
    assert converted == [int(timeline.pts[52]), int(timeline.pts[55])]  # only the wanted frames became RGB


def test_the_timeline_is_probed_once_per_file_and_again_after_a_rewrite(tmp_path):
    path = write_video(tmp_path / "v.mp4", _coded_frames(20), fps=10)
    assert probe_video(path) is probe_video(path)
    write_video(path, _coded_frames(30), fps=10)
    assert len(probe_video(path).times) == 30
