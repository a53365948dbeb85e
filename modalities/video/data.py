"""Video datasets: a VideoMAE-style CSV list, a folder per class, or a flat folder of video files.

A split named ``train`` is ``<root>/train.csv`` when that file exists (lines ``path [label]``, the list syntax
of :mod:`anymae.core.data.files`: ``#`` comments, labels by index or class name, paths relative to ``root``
unless absolute, the VideoMAE / MAE-ST convention), else the folder ``<root>/train/`` searched recursively
(class sub-folders or flat).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from anymae.core.data.files import ListedFile, find_files, read_file_list
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits, TimedItems

from .decode import VIDEO_EXTENSIONS, clip_indices, probe_video, read_clips, read_clips_at

__all__ = ["VideoClips", "find_split", "read_list"]


def read_list(csv: Path, root: Path, *, classes: Sequence[str] | None = None) -> list[ListedFile]:
    """A split's list (``path [label]`` lines, the syntax of :mod:`anymae.core.data.files`; paths may contain
    blanks, as in VideoMAE's lists) -> [(file, class index or None)]. ``classes``: names the labels may use.
    Files are not checked here: an unreadable video is a bad sample, counted and replaced."""
    return read_file_list(csv, root, classes=classes, check_files=False, spaces_in_paths=True, what="video")


def find_split(root: Path, split: str) -> list[ListedFile]:
    """The files of ``split`` under ``root`` with labels (class folder index, or None for flat folders)."""
    csv = root / f"{split}.csv"
    if csv.is_file():
        return read_list(csv, root)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"neither {csv} nor the folder {folder} exists")
    files = find_files(folder, VIDEO_EXTENSIONS)
    if not files:
        raise DataError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) under {folder}")
    classes = sorted({p.parent for p in files if p.parent != folder})
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index.get(p.parent)) for p in files]


class VideoClips(DatasetWithTraits):
    """Video files -> clips (C, T, H, W).

    ``mode="random"``: training, random clip starts; with ``num_clips`` > 1 one file read gives
    (num_clips, C, T, H, W) (VideoMAE's repeated sampling, ``num_sample``). ``mode="uniform"``: evaluation,
    ``num_clips`` evenly spaced clips per file, each its own item. ``transform(frames, rng)``
    turns uint8 (T, H, W, 3) frames into a float clip; randomness comes from torch's generator, which
    the DataLoader seeds per worker. ``repeats`` lists every file that many times per epoch.
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        num_frames: int,
        sampling_rate: int,
        transform: Callable[[np.ndarray, np.random.Generator], Tensor],
        mode: Literal["random", "uniform"],
        num_clips: int = 1,
        repeats: int = 1,
    ) -> None:
        if not files:
            raise DataError("no video files given")
        self.files = list(files)
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.transform, self.mode = transform, mode
        self.num_clips, self.repeats = num_clips, repeats

    @property
    def samples_per_item(self) -> int:
        """Clips stacked in one training item (``num_sample``): the trainer draws a mask for each and trains on
        N*S clips per batch of N items."""
        return self.num_clips if self.mode == "random" else 1

    @property
    def traits(self) -> DatasetTraits:
        # Random single clips can start where a composite model says (aligned with its other parts).
        timed = TimedItems(self.span, self.at) if self.mode == "random" and self.num_clips == 1 else None
        return DatasetTraits(samples_per_item=self.samples_per_item, source=self.source, timed=timed)

    def span(self, index: int) -> tuple[float, float]:
        """(the file's duration, a clip's length) in seconds, on the file's nominal frame grid."""
        timeline = probe_video(self.source(index))
        return timeline.num_grid_frames / timeline.fps, self.num_frames * self.sampling_rate / timeline.fps

    def at(self, index: int, start: float) -> Tensor:
        """Item ``index`` (a random-mode clip) starting ``start`` seconds into its file (the latest start that fits
        when later), with the training transform."""
        path = self.source(index)
        fps, width = probe_video(path).fps, (self.num_frames - 1) * self.sampling_rate + 1

        def choose(grid: int) -> list[list[int]]:
            first = min(round(start * fps), max(grid - width, 0))
            return [clip_indices(grid, start=first, num_frames=self.num_frames, sampling_rate=self.sampling_rate)]

        rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        clip = read_clips_at(path, choose)[0]
        try:
            return self.transform(clip, rng)
        except (ValueError, RuntimeError) as exc:
            raise BadSampleError(f"video {path}: cannot transform its frames {clip.shape}: {exc}") from None

    def source(self, index: int) -> Path:
        """The file item ``index`` is read from."""
        return self.files[index % len(self.files)] if self.mode == "random" else self.files[index // self.num_clips]

    def __len__(self) -> int:
        per_file = self.num_clips if self.mode == "uniform" else self.repeats
        return len(self.files) * per_file

    def __getitem__(self, index: int) -> Tensor:
        if self.mode == "random":
            path = self.files[index % len(self.files)]
            rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
            clips = self._read(path, self.num_clips, rng)
        else:
            path = self.files[index // self.num_clips]
            rng = np.random.default_rng(index)  # evaluation views are fixed
            clips = self._read(path, self.num_clips, rng)[index % self.num_clips :][:1]
        try:
            out = [self.transform(clip, rng) for clip in clips]  # S x (C, T, H, W)
        except (ValueError, RuntimeError) as exc:
            raise BadSampleError(f"video {path}: cannot transform its frames {clips.shape[1:]}: {exc}") from None
        return out[0] if len(out) == 1 else torch.stack(out)  # (C, T, H, W) or (S, C, T, H, W)

    def _read(self, path: Path, num_clips: int, rng: np.random.Generator) -> np.ndarray:
        return read_clips(
            path,
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            num_clips=num_clips,
            mode=self.mode,
            rng=rng,
        )
