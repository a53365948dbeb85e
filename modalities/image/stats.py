"""Per-band mean and std of a folder of images, for ``data.mean`` / ``data.std``.

The statistics are those of the values the model is normalized from: every file read as the training data
reads it (its bands at full precision, ``--bands`` selected, scaled by ``--value-range`` or the integer
type's range; see :mod:`anymae.modalities.image.data`), every pixel of every whole file counting once. The std
is the population std (numpy's ``std``, ``ddof=0``), as torchvision's ImageNet statistics; files are merged
with Chan et al.'s pairwise update in float64, so a large folder loses no precision.

    anymae image-stats /data/sentinel2/train --value-range 0 10000
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anymae.core.data.samples import BadSampleError, DataError

from .data import IMAGE_EXTENSIONS, ImageReader, find_images, read_bands, scale_values

__all__ = ["BandStats", "ImageStatsCommand", "band_stats"]


@dataclass
class BandStats:
    """Per-band ``mean`` and ``std`` (C,) of ``files`` measured files; ``skipped`` names the others."""

    mean: np.ndarray
    std: np.ndarray
    files: int
    skipped: list[str] = field(default_factory=list)


def band_stats(
    files: Iterable[Path],
    *,
    bands: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
    array_layout: str = "CHW",
) -> BandStats:
    """Mean and std per band of ``files`` after scaling. The first readable file fixes the band count (or
    ``bands`` does); an unreadable file or one with another band count is skipped with a warning naming it."""
    reader: ImageReader | None = None
    count, mean, m2 = 0, np.zeros(0), np.zeros(0)
    used, skipped = 0, []
    for path in files:
        try:
            stored = read_bands(path, array_layout=array_layout)
            if reader is None:
                chans = len(bands) if bands is not None else stored.shape[0]
                reader = ImageReader(in_chans=chans, bands=tuple(bands) if bands is not None else None)
                mean, m2 = np.zeros(chans), np.zeros(chans)
            x = scale_values(reader.select(path, stored), value_range).numpy().astype(np.float64)
        except BadSampleError as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            skipped.append(str(path))
            continue
        values = x.reshape(x.shape[0], -1)  # (C, H*W)
        n = values.shape[1]
        file_mean = values.mean(axis=1)
        file_m2 = ((values - file_mean[:, None]) ** 2).sum(axis=1)
        total = count + n
        delta = file_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + file_m2 + delta**2 * (count * n / total)
        count, used = total, used + 1
    if used == 0:
        raise DataError(f"no readable image files to measure ({len(skipped)} skipped)")
    return BandStats(mean=mean, std=np.sqrt(m2 / count), files=used, skipped=skipped)


class ImageStatsCommand:
    """``anymae image-stats FOLDER``: registered through the ``anymae_register_commands`` hook."""

    help = "per-band mean/std of a folder of images after scaling (for data.mean / data.std)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The command's arguments (mounted as ``anymae image-stats``)."""
        parser.add_argument("folder", help="a folder of images (class sub-folders or flat), e.g. DATA_ROOT/train")
        parser.add_argument(
            "--bands", type=int, nargs="+", help="band indices to measure, as data.bands (default: all)"
        )
        parser.add_argument(
            "--value-range", type=float, nargs=2, metavar=("LO", "HI"), help="as data.value_range: LO -> 0, HI -> 1"
        )
        parser.add_argument("--array-layout", choices=["CHW", "HWC"], default="CHW", help="as data.array_layout")
        parser.add_argument("--limit", type=int, default=None, help="measure only the first N files (sorted by path)")

    def run(self, args: argparse.Namespace) -> int:
        """Print a ``data:`` block with ``mean`` and ``std`` (and the scaling keys given) for a config; 0 on success."""
        folder = Path(args.folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"image-stats: folder {folder} does not exist")
        files = find_images(folder)[: args.limit] if args.limit else find_images(folder)
        if not files:
            raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) under {folder}")
        value_range = tuple(args.value_range) if args.value_range else None
        stats = band_stats(files, bands=args.bands, value_range=value_range, array_layout=args.array_layout)
        scaling = f"value_range {list(value_range)}" if value_range else "each file's integer type range"
        skipped = f"; {len(stats.skipped)} skipped (see the warnings)" if stats.skipped else ""
        print(f"# per-band statistics of {stats.files} files under {folder}, scaled by {scaling}{skipped}")
        print("data:")
        if args.bands:
            print(f"  bands: {list(args.bands)}")
        if value_range:
            print(f"  value_range: [{value_range[0]:g}, {value_range[1]:g}]")
        if args.array_layout != "CHW":
            print(f"  array_layout: {args.array_layout}")
        print(f"  mean: [{', '.join(f'{v:.7g}' for v in stats.mean)}]")
        print(f"  std: [{', '.join(f'{v:.7g}' for v in stats.std)}]")
        return 0
