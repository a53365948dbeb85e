"""VideoMAE's frame samplers for fine-tuning and testing: which frames of a video make a clip.

Indices are on the file's nominal frame grid (``F`` frames, VideoMAE's ``len(vr)``); :func:`.decode.read_clips_at`
maps them to timestamps. Two families, as in VideoMAE's ``run_class_finetuning``:

- ``clip`` (Kinetics, ``VideoClsDataset``): ``num_frames`` frames spread over a window of ``num_frames *
  sampling_rate`` frames; training draws the window at random, testing takes ``num_segments`` windows evenly
  spaced over every ``sampling_rate``-th frame.
- ``segments`` (Something-Something v2, ``SSVideoClsDataset`` with ``num_segment = num_frames``): the video is
  cut into ``num_frames`` equal segments and one frame is taken from each (TSN sampling); training takes a random
  frame per segment, testing view ``k`` of ``num_segments`` takes the frame ``k / num_segments`` of the way in.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "FRAME_SAMPLERS",
    "eval_clip_indices",
    "eval_indices",
    "eval_segment_indices",
    "train_clip_indices",
    "train_indices",
    "train_segment_indices",
]

FRAME_SAMPLERS = ("clip", "segments")


def train_clip_indices(
    num_grid_frames: int, *, num_frames: int, sampling_rate: int, rng: np.random.Generator
) -> list[int]:
    """VideoMAE's ``VideoClsDataset`` training indices (one segment): ``num_frames`` points of
    ``linspace(start, end, num_frames)`` truncated to ints, ``end`` drawn from ``[num_frames * rate, F)``.

    A video of at most ``num_frames * rate`` frames gives ``linspace(0, F, F // rate)`` padded with ``F`` and
    clipped to ``F - 1``: the clip ends by repeating the last frame (VideoMAE's rule for short videos).
    """
    frames, span = num_grid_frames, num_frames * sampling_rate
    if frames <= span:
        reach = frames // sampling_rate
        index = np.concatenate([np.linspace(0, frames, num=reach), np.full(num_frames - reach, float(frames))])
        return np.clip(index, 0, frames - 1).astype(np.int64).tolist()
    end = int(rng.integers(span, frames))
    start = end - span
    return np.clip(np.linspace(start, end, num=num_frames), start, end - 1).astype(np.int64).tolist()


def eval_clip_indices(
    num_grid_frames: int, *, num_frames: int, sampling_rate: int, num_segments: int
) -> list[list[int]]:
    """VideoMAE's ``VideoClsDataset`` test views: every ``rate``-th frame (padded with the last to ``num_frames``),
    and ``num_segments`` windows of ``num_frames`` of them starting at ``int(k * (n - num_frames) / (S - 1))``.

    One segment (where VideoMAE would divide by zero) is the centre window, ``int((n - num_frames) / 2)``.
    """
    every = list(range(0, num_grid_frames, sampling_rate))
    every += [every[-1]] * (num_frames - len(every))
    room = max(len(every) - num_frames, 0)
    if num_segments == 1:
        starts = [int(room / 2)]
    else:
        step = room / (num_segments - 1)
        starts = [int(k * step) for k in range(num_segments)]
    return [every[s : s + num_frames] for s in starts]


def train_segment_indices(num_grid_frames: int, *, num_frames: int, rng: np.random.Generator) -> list[int]:
    """VideoMAE's ``SSVideoClsDataset`` training indices: segment ``x`` of length ``F // num_frames`` gives frame
    ``x * (F // num_frames) + randint(F // num_frames)``. A video shorter than ``num_frames`` gives frame 0
    ``num_frames`` times, as VideoMAE does (its other fallback branch can never be reached)."""
    length = num_grid_frames // num_frames
    if length == 0:
        return [0] * num_frames
    return (np.arange(num_frames) * length + rng.integers(length, size=num_frames)).tolist()


def eval_segment_indices(num_grid_frames: int, *, num_frames: int, num_segments: int) -> list[list[int]]:
    """VideoMAE's ``SSVideoClsDataset`` test views: with ``tick = F / num_frames``, view ``k`` takes frames
    ``int(tick * k / S + tick * x)``. For its two views that is exactly VideoMAE's split of the sorted
    ``[int(tick * x)] + [int(tick / 2 + tick * x)]`` into even and odd positions (segment starts and middles)."""
    tick = num_grid_frames / num_frames
    return [[int(tick * k / num_segments + tick * x) for x in range(num_frames)] for k in range(num_segments)]


def train_indices(
    num_grid_frames: int,
    *,
    sampler: Literal["clip", "segments"],
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator,
) -> list[list[int]]:
    """One random training clip of ``sampler`` (a list holding one list of ``num_frames`` indices)."""
    if sampler == "segments":
        return [train_segment_indices(num_grid_frames, num_frames=num_frames, rng=rng)]
    return [train_clip_indices(num_grid_frames, num_frames=num_frames, sampling_rate=sampling_rate, rng=rng)]


def eval_indices(
    num_grid_frames: int,
    *,
    sampler: Literal["clip", "segments"],
    num_frames: int,
    sampling_rate: int,
    num_segments: int,
) -> list[list[int]]:
    """The ``num_segments`` temporal test views of ``sampler``, each ``num_frames`` indices."""
    if sampler == "segments":
        return eval_segment_indices(num_grid_frames, num_frames=num_frames, num_segments=num_segments)
    return eval_clip_indices(
        num_grid_frames, num_frames=num_frames, sampling_rate=sampling_rate, num_segments=num_segments
    )
