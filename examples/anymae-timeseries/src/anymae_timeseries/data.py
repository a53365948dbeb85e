"""Time-series data: .npy/.csv files (or a synthetic set), standardized, cut into windows (C, T)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anymae.core import BadSampleError, DataError
from anymae.core.data.samples import DatasetWithTraits

__all__ = [
    "SERIES_EXTENSIONS",
    "SYNTHETIC",
    "RandomWindows",
    "fixed_windows",
    "read_series",
    "standardize",
    "synthetic_series",
]

SERIES_EXTENSIONS = (".npy", ".csv")
SYNTHETIC = "synthetic"  # data.root value for the generated demo set


def read_series(path: str | Path, channels: int) -> Tensor:
    """One file holding (T_total, C) -> a float tensor (C, T_total). A CSV may have one header row."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with path.open() as f:
                first = f.readline().split(",")
            try:
                [float(v) for v in first]
                skip = 0
            except ValueError:  # a header row
                skip = 1
            array = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except (OSError, ValueError) as exc:
        raise BadSampleError(f"cannot read series {path}: {exc}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != channels:
        raise BadSampleError(
            f"series {path} has shape {array.shape}; expected (T_total, {channels}) (model.tokenizer.channels)"
        )
    return torch.from_numpy(np.ascontiguousarray(array.T, dtype=np.float32))  # (C, T_total)


def synthetic_series(*, num_series: int, channels: int, length: int, seed: int) -> list[Tensor]:
    """Deterministic noisy sums of three sines per channel, random periods (8-64 steps) and phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)  # (T_total,)
    out = []
    for _ in range(num_series):
        period = rng.uniform(8, 64, size=(channels, 3, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(channels, 3, 1))
        amp = rng.uniform(0.3, 1.0, size=(channels, 3, 1))
        clean = (amp * np.sin(2 * np.pi * t / period + phase)).sum(axis=1)  # (C, T_total)
        noisy = clean + 0.1 * rng.standard_normal(clean.shape)
        out.append(torch.from_numpy(noisy.astype(np.float32)))
    return out


def standardize(series: Tensor, stats_from: Tensor | None = None) -> Tensor:
    """(C, T) -> zero mean, unit std per channel, with the statistics of ``stats_from`` (default: itself)."""
    ref = series if stats_from is None else stats_from
    return (series - ref.mean(dim=1, keepdim=True)) / (ref.std(dim=1, keepdim=True) + 1e-6)


class RandomWindows(DatasetWithTraits):
    """``per_series`` random crops (C, length) of every series per epoch; a new start on every access."""

    def __init__(self, series: Sequence[Tensor], *, length: int, per_series: int) -> None:
        short = [s.shape[1] for s in series if s.shape[1] < length]
        if not series or short:
            raise DataError(f"need series of at least {length} steps (model.tokenizer.length), got lengths {short}")
        self.series, self.length, self.per_series = list(series), length, per_series

    def __len__(self) -> int:
        return len(self.series) * self.per_series

    def __getitem__(self, index: int) -> Tensor:
        s = self.series[index % len(self.series)]
        # Seeded through torch's global RNG, which the training loop seeds (and each DataLoader worker derives).
        start = int(torch.randint(0, s.shape[1] - self.length + 1, ()))
        return s[:, start : start + self.length]  # (C, T)


def fixed_windows(series: Sequence[Tensor], *, length: int) -> Tensor:
    """Non-overlapping windows of every series, in order: (M, C, length); the same on every call."""
    windows = [s[:, i : i + length] for s in series for i in range(0, s.shape[1] - length + 1, length)]
    if not windows:
        raise DataError(f"no held-out window of {length} steps; lower data.heldout_fraction or use longer series")
    return torch.stack(windows)
