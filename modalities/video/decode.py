"""Video files -> frames with PyAV: clips sampled by timestamp, VideoMAE's frame-index rules, rotation applied.

A clip is ``num_frames`` frames ``sampling_rate`` frames apart. Indices are chosen exactly as VideoMAE's
pre-training loader does (``_sample_train_indices`` + ``_video_TSN_decord_batch_loader``, reference
section 3) on a *nominal* frame grid ``t0 + i / fps``; each grid time is then mapped to the frame on screen
at that time (the last frame whose timestamp is not later). On a constant-frame-rate file this is exactly
VideoMAE's indexing; on a variable-frame-rate file the clip still spans the same wall-clock time.

The file is read once per sample, whatever the number of clips drawn from it (VideoMAE's repeated
sampling, ``num_sample``): one decode pass that keeps only the frames some clip needs, starting at the
keyframe at or before the first of them (a seek), not at the file's start, and skipping the non-reference
frames (B-frames nothing depends on) that no clip needs. The timeline (one demux pass over
the packets' timestamps and keyframe flags) is probed once per file and process and cached, keyed by the
file's size and modification time.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from anymae.core.data.samples import BadSampleError

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoTimeline",
    "clip_indices",
    "clip_starts",
    "probe_video",
    "read_clips",
    "read_clips_at",
    "write_video",
]

# PyAV's decoder threading. Slice threading decodes H.264 at about 1.35x one thread per process on 2 cores; frame
# threading ("AUTO") was no faster than one thread there, and slower still after a seek, which flushes its frame
# queue (benchmarks/video_data.py). A DataLoader's workers share the cores anyway.
THREAD_TYPE = "SLICE"

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv")


@dataclass(frozen=True)
class VideoTimeline:
    """Presentation timestamps of one file's video stream (seconds, ascending) and its nominal frame rate."""

    path: Path
    times: np.ndarray  # (F,) float64 seconds
    pts: np.ndarray  # (F,) int64, in the stream's time base, same order as ``times``
    fps: float
    keyframes: np.ndarray  # (K,) int64 pts of the keyframes (decoding can start there), ascending

    def seek_point(self, first_pts: int) -> int | None:
        """The pts of the last keyframe at or before ``first_pts``, or None when that is the stream's start."""
        k = int(np.searchsorted(self.keyframes, first_pts, side="right")) - 1
        return int(self.keyframes[k]) if k > 0 else None

    @property
    def num_grid_frames(self) -> int:
        """Frames on the nominal grid ``t0 + i / fps`` covering the stream: ``F`` for a constant rate."""
        return round((self.times[-1] - self.times[0]) * self.fps) + 1

    def frame_at(self, grid_index: int) -> int:
        """Position in ``times`` of the frame shown at grid time ``t0 + grid_index / fps``."""
        t = self.times[0] + grid_index / self.fps
        # A tolerance of 1/1000 frame absorbs time-base rounding (1024/10240 s is exactly 0.1 s, 1001/30000 is not).
        return max(int(np.searchsorted(self.times, t + 1e-3 / self.fps, side="right")) - 1, 0)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadSampleError(f"cannot read video {path}: {exc} (expected a video file FFmpeg can decode)") from None


def probe_video(path: str | Path) -> VideoTimeline:
    """Demux (no decoding) the first video stream's packet timestamps and keyframes; raises BadSampleError naming
    the file. Cached per process by path, size and modification time (a rewritten file is probed again)."""
    path = Path(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise BadSampleError(f"cannot read video {path}: {exc} (expected a video file FFmpeg can decode)") from None
    return _probe(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _probe(path_name: str, size: int, mtime_ns: int) -> VideoTimeline:
    path = Path(path_name)
    with _open(path) as container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise BadSampleError(f"video {path} has no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        try:
            # Raw elementary streams carry no pts: their decode timestamps are then the only clock.
            packets = [
                (p.pts if p.pts is not None else p.dts, p.is_keyframe) for p in container.demux(stream) if p.size > 0
            ]
        except av.error.FFmpegError as exc:
            raise BadSampleError(f"cannot read video {path}: {exc}") from None
        pts = sorted({t for t, _ in packets if t is not None})
        if not pts:
            raise BadSampleError(f"video {path} has no frames")
        keyframes = sorted({t for t, key in packets if key and t is not None} | {pts[0]})
        time_base = float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
    times = np.asarray(pts, dtype=np.float64) * time_base
    if rate:
        fps = float(rate)
    elif len(times) > 1:
        fps = 1.0 / float(np.median(np.diff(times)))  # no declared rate: the typical frame spacing
    else:
        fps = 1.0
    return VideoTimeline(
        path=path,
        times=times,
        pts=np.asarray(pts, dtype=np.int64),
        fps=fps,
        keyframes=np.asarray(keyframes, dtype=np.int64),
    )


def clip_indices(num_grid_frames: int, *, start: int, num_frames: int, sampling_rate: int) -> list[int]:
    """VideoMAE's frame indices of one clip starting at ``start`` (0-based).

    Its loader steps the (1-based) offset by ``sampling_rate`` only while ``offset + rate < duration``, so a
    clip that would run past the end repeats its last reachable frame (that is how videos shorter than
    ``num_frames * sampling_rate`` frames are handled), and the very last frame is never stepped onto.
    """
    indices, offset = [], start + 1
    for _ in range(num_frames):
        indices.append(offset - 1)
        if offset + sampling_rate < num_grid_frames:
            offset += sampling_rate
    return indices


def clip_starts(
    num_grid_frames: int,
    *,
    num_frames: int,
    sampling_rate: int,
    num_clips: int,
    mode: Literal["random", "uniform"],
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Start frames of ``num_clips`` clips.

    ``random`` (training): VideoMAE's ``randint(F - num_frames * rate + 1)`` per clip, 0 when the video is
    shorter than that span. ``uniform`` (evaluation): starts spread evenly from 0 to the last possible start,
    the centre one for a single clip.
    """
    span = num_frames * sampling_rate
    room = num_grid_frames - span + 1  # VideoMAE's average_duration with one segment
    if mode == "random":
        rng = rng or np.random.default_rng()
        return [int(rng.integers(room)) if room > 0 else 0 for _ in range(num_clips)]
    if room <= 0:
        return [0] * num_clips
    if num_clips == 1:
        return [(room - 1) // 2]
    return [round(k * (room - 1) / (num_clips - 1)) for k in range(num_clips)]


def read_clips(
    path: str | Path,
    *,
    num_frames: int,
    sampling_rate: int,
    num_clips: int = 1,
    mode: Literal["random", "uniform"] = "random",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Decode ``num_clips`` clips of one file: uint8 (num_clips, num_frames, H, W, 3), RGB, rotation applied.

    Raises :class:`BadSampleError` naming the file when it cannot be opened, has no video stream, or
    a frame a clip needs cannot be decoded (e.g. a truncated file).
    """

    def choose(grid: int) -> list[list[int]]:
        starts = clip_starts(
            grid, num_frames=num_frames, sampling_rate=sampling_rate, num_clips=num_clips, mode=mode, rng=rng
        )
        return [clip_indices(grid, start=s, num_frames=num_frames, sampling_rate=sampling_rate) for s in starts]

    return read_clips_at(path, choose)


def read_clips_at(path: str | Path, choose: Callable[[int], Sequence[Sequence[int]]]) -> np.ndarray:
    """Decode the clips whose frame indices ``choose(num_grid_frames)`` picks on the file's nominal frame grid
    (any sampling rule: VideoMAE's pre-training, fine-tuning or test samplers) -> uint8 (S, T, H, W, 3).

    The file is probed and decoded once whatever the number of clips; errors as :func:`read_clips`.
    """
    timeline = probe_video(path)
    positions = [[timeline.frame_at(int(i)) for i in clip] for clip in choose(timeline.num_grid_frames)]
    frames = _decode_frames(timeline, {p for clip in positions for p in clip})
    stacked = np.stack([frames[p] for clip in positions for p in clip])  # one copy, not one per clip and another
    return stacked.reshape(len(positions), len(positions[0]), *stacked.shape[1:])


def _decode_frames(timeline: VideoTimeline, wanted: set[int]) -> dict[int, np.ndarray]:
    """Decode the frames at the given positions of ``timeline`` -> position -> (H, W, 3): from the keyframe at or
    before the first of them (a seek) to the last, converting only those to RGB. Should a seek land after a
    wanted frame (a file whose index misplaces keyframes), the file is decoded again from its start."""
    path = timeline.path
    by_pts = {int(timeline.pts[p]): p for p in wanted}
    start = timeline.seek_point(min(by_pts))
    out = _decode_span(path, by_pts, start)
    if start is not None and len(out) < len(wanted):
        out = _decode_span(path, by_pts, None)
    missing = sorted(wanted - set(out))
    if missing:
        at = ", ".join(f"{timeline.times[p]:.3f}s" for p in missing[:3])
        raise BadSampleError(f"video {path}: frames at {at} could not be decoded (truncated or corrupt file?)")
    return out


def _decode_span(path: Path, by_pts: dict[int, int], start: int | None) -> dict[int, np.ndarray]:
    """Decode from the keyframe at pts ``start`` (None: the file's start) until every frame of ``by_pts`` (pts ->
    position) is out or the stream ends -> position -> (H, W, 3)."""
    out: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = THREAD_TYPE
        context = stream.codec_context
        try:
            if start is not None:
                container.seek(start, stream=stream, backward=True, any_frame=False)  # flushes the decoder
            for packet in container.demux(stream):
                # A frame no clip needs and no other frame references (a non-reference B-frame) is not decoded.
                wanted = (packet.pts if packet.pts is not None else packet.dts) in by_pts or packet.size == 0
                context.skip_frame = "DEFAULT" if wanted else "NONREF"
                for frame in packet.decode():
                    stamp = frame.pts if frame.pts is not None else frame.dts
                    if stamp in by_pts:
                        out[by_pts[stamp]] = _upright(frame)
                if len(out) == len(by_pts):
                    break
        except av.error.FFmpegError as exc:
            if len(out) < len(by_pts):
                raise BadSampleError(f"cannot decode video {path}: {exc}") from None
    return out


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """RGB (H, W, 3) as it should be displayed: the display matrix's rotation (counter-clockwise degrees,
    ``VideoFrame.rotation``) is applied, as players and ``ffmpeg``'s autorotate do. Mirroring flags of the
    matrix are not applied (PyAV exposes the rotation only)."""
    image = _reformatter().reformat(frame, format="rgb24").to_ndarray()
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's converter to RGB. Reused, it keeps FFmpeg's scaler context between frames of one size:
    0.15 ms a 340x256 frame against 0.55 ms for ``to_ndarray(format=...)``, which sets one up per frame; the
    pixels are the same."""
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


def write_video(
    path: str | Path,
    frames: Sequence[np.ndarray] | np.ndarray,
    *,
    fps: float = 25,
    codec: str | None = None,
    rotation: int = 0,
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) into a file; the codec defaults from the extension.

    Used by the demo-data generator, the reconstruction animation and the tests. H and W are cropped to
    even sizes for 4:2:0 codecs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or {".webm": "libvpx-vp9", ".avi": "mjpeg", ".gif": "gif"}.get(suffix, _h264())
    pix_fmt = {"mjpeg": "yuvj420p", "gif": "rgb8", "png": "rgb24"}.get(codec, "yuv420p")
    frames = np.asarray(frames)
    if pix_fmt.endswith("420p"):
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec in ("libx264", "h264"):
            stream.options = {"crf": "18", "preset": "veryfast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame.reformat(format=pix_fmt) if pix_fmt != "rgb24" else frame))
        container.mux(stream.encode())
    return path


def _h264() -> str:
    """libx264 when this FFmpeg build has it, else the always-present MPEG-4 part 2 encoder."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except av.codec.codec.UnknownCodecError:
        return "mpeg4"


def _rate(fps: float) -> int | Fraction:
    return int(fps) if math.isclose(fps, round(fps)) else Fraction(fps).limit_denominator(1001)
