"""A long video as consecutive model inputs (``anymae embed``): sliding windows of clips, decoded in one pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
from torch import Tensor

from anymae.core.data.samples import BadSampleError, DataError

from .decode import THREAD_TYPE, _open, _upright, probe_video

__all__ = ["video_windows"]


def video_windows(
    path: str | Path,
    *,
    num_frames: int,
    sampling_rate: int,
    window: float | None,
    hop: float | None,
    transform: Callable[[np.ndarray], Tensor],
) -> Iterator[tuple[float, Tensor]]:
    """(start seconds, ``transform(frames)``) for windows of ``window`` seconds every ``hop`` seconds over the whole
    video, in order; ``frames`` are ``num_frames`` uint8 (T, H, W, 3) frames spread evenly over the window.

    Default window: the model's clip, ``num_frames * sampling_rate`` frames (VideoMAE's span; the frames are then
    ``sampling_rate`` apart); default hop: the window. Windows continue while the video does; a window running past
    the end repeats the last frame (as VideoMAE's loader does for short videos). The file is decoded once, keeping
    only the frames of the windows not yet emitted."""
    timeline = probe_video(path)
    fps, grid = timeline.fps, timeline.num_grid_frames
    size = num_frames * sampling_rate if window is None else window * fps  # grid frames per window
    step = size if hop is None else hop * fps
    if size <= 0 or step <= 0:
        raise DataError(f"--window and --hop must be positive, got {window} and {hop}")
    starts = [0.0]
    while starts[-1] + size < grid:  # the last window reaches the end of the video
        starts.append(starts[-1] + step)
    clips = [
        [timeline.frame_at(min(math.floor(s + i * size / num_frames), grid - 1)) for i in range(num_frames)]
        for s in starts
    ]  # positions in timeline.times, per window
    by_pts = {int(timeline.pts[p]): p for clip in clips for p in clip}
    frames: dict[int, np.ndarray] = {}
    done = 0
    with _open(Path(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = THREAD_TYPE
        try:
            for frame in container.decode(stream):
                stamp = frame.pts if frame.pts is not None else frame.dts
                if stamp not in by_pts:
                    continue
                frames[by_pts[stamp]] = _upright(frame)
                while done < len(clips) and all(p in frames for p in clips[done]):
                    yield starts[done] / fps, transform(np.stack([frames[p] for p in clips[done]]))
                    done += 1
                    keep = min((p for clip in clips[done:] for p in clip), default=len(timeline.times))
                    frames = {p: f for p, f in frames.items() if p >= keep}
                if done == len(clips):
                    return
        except av.error.FFmpegError as exc:
            raise BadSampleError(f"cannot decode video {path}: {exc}") from None
    raise BadSampleError(f"video {path}: frames of window {done + 1} could not be decoded (truncated file?)")
