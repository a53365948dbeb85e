"""Video datasets: a VideoMAE-style CSV list, a folder per class, or a flat folder of video files.

A split named ``train`` is ``<root>/train.csv`` when that file exists (lines ``path label``, space separated,
paths relative to ``root`` unless absolute: the VideoMAE / MAE-ST convention), else the folder
``<root>/train/`` searched recursively (class sub-folders or flat).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.data import BadSampleError, DataError

from .decode import VIDEO_EXTENSIONS, read_clips

__all__ = ["VideoClips", "find_split", "read_list"]


def read_list(csv: Path, root: Path) -> list[tuple[Path, int]]:
    """``path label`` lines -> [(file, label)]; a line without a label gets -1; blank lines are skipped."""
    items = []
    for line in csv.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, tail = line.rpartition(" ")
        path, label = (head, int(tail)) if head and tail.lstrip("-").isdigit() else (line, -1)
        file = Path(path).expanduser()
        items.append((file if file.is_absolute() else root / file, label))
    return items


def find_split(root: Path, split: str) -> list[tuple[Path, int]]:
    """The files of ``split`` under ``root`` with labels (class folder index, or -1 for flat folders)."""
    csv = root / f"{split}.csv"
    if csv.is_file():
        items = read_list(csv, root)
        if not items:
            raise DataError(f"{csv} lists no videos")
        return items
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"neither {csv} nor the folder {folder} exists")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) under {folder}")
    classes = sorted({p.parent for p in files if p.parent != folder})
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index.get(p.parent, -1)) for p in files]


class VideoClips(Dataset):
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
            out = torch.stack([self.transform(clip, rng) for clip in clips])  # (S, C, T, H, W)
        except (ValueError, RuntimeError) as exc:
            raise BadSampleError(f"video {path}: cannot transform its frames {clips.shape[1:]}: {exc}") from None
        return out[0] if len(out) == 1 else out

    def _read(self, path: Path, num_clips: int, rng: np.random.Generator) -> np.ndarray:
        return read_clips(
            path,
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            num_clips=num_clips,
            mode=self.mode,
            rng=rng,
        )
