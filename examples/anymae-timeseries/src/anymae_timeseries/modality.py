"""The time-series modality: config dataclasses, datasets, input loading and the reconstruction figure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from anymae.core import DataError, Modality
from anymae.core.data.files import find_files, resolve_data_root
from anymae.core.model.figures import removed_values
from anymae.plugins import hookimpl

from .data import SERIES_EXTENSIONS, SYNTHETIC, RandomWindows, fixed_windows, read_series, standardize, synthetic_series
from .tokenizer import PatchTokenizer1d
from .visualize import reconstruct, save_reconstruction_plot

__all__ = ["TimeSeriesDataConfig", "TimeSeriesModality", "TimeSeriesTokenizerConfig", "anymae_register_modalities"]


@dataclass
class TimeSeriesTokenizerConfig:
    """``model.tokenizer`` for time series: windows of ``length`` steps of ``channels`` variables."""

    channels: int = 1  # C
    length: int = 128  # T, the window the model sees
    patch_size: int = 8  # p time steps per token

    def __post_init__(self) -> None:
        if min(self.channels, self.length, self.patch_size) < 1:
            raise ValueError(f"channels, length and patch_size must be positive, got {self}")
        if self.length % self.patch_size:
            raise ValueError(f"series length {self.length} (length) is not divisible by patch {self.patch_size}")


@dataclass
class TimeSeriesDataConfig:
    """``data`` for time series: a folder of .npy/.csv files, each (T_total, C), or ``synthetic``."""

    root: str = SYNTHETIC  # a folder of .npy/.csv files, or "synthetic": generated sums of sines
    num_series: int = 32  # synthetic only: how many series
    series_length: int = 1024  # synthetic only: T_total of each series
    seed: int = 0  # synthetic only: the generated set is a function of this seed
    windows_per_series: int = 8  # random training windows drawn from each series per epoch
    heldout_fraction: float = 0.2  # the last fraction of every series (in time) is held out; 0: none
    standardize: bool = True  # per series and channel, with the statistics of its training part

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if min(self.num_series, self.series_length, self.windows_per_series) < 1:
            raise ValueError("num_series, series_length and windows_per_series must be at least 1")


class TimeSeriesModality(Modality):
    name = "timeseries"
    tokenizer_config = TimeSeriesTokenizerConfig
    data_config = TimeSeriesDataConfig

    def build_tokenizer(self, config: TimeSeriesTokenizerConfig, *, embed_dim: int) -> PatchTokenizer1d:
        return PatchTokenizer1d(
            channels=config.channels, length=config.length, patch_size=config.patch_size, embed_dim=embed_dim
        )

    def build_dataset(
        self, data: TimeSeriesDataConfig, tokenizer: TimeSeriesTokenizerConfig, *, split: str
    ) -> Dataset | None:
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        if split == "heldout" and data.heldout_fraction == 0:
            return None
        parts = [_split(s, data, split) for s in _load_all(data, tokenizer)]
        if split == "train":
            return RandomWindows(parts, length=tokenizer.length, per_series=data.windows_per_series)
        return TensorDataset(fixed_windows(parts, length=tokenizer.length))

    def load_inputs(
        self, paths: Sequence[str | Path], data: TimeSeriesDataConfig, tokenizer: TimeSeriesTokenizerConfig
    ) -> Tensor:
        """Each file's first ``length`` steps, standardized with the whole file's statistics: (N, C, T)."""
        batch = []
        for path in paths:
            series = read_series(path, tokenizer.channels)
            if series.shape[1] < tokenizer.length:
                raise DataError(f"{path}: {series.shape[1]} steps, the model needs {tokenizer.length}")
            batch.append((standardize(series) if data.standardize else series)[:, : tokenizer.length])
        return torch.stack(batch)

    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Any,
        data: TimeSeriesDataConfig,
        path: str | Path,
        caption: str = "",
    ) -> Path:
        recon = reconstruct(pred, tokenizer=tokenizer)
        removed = removed_values(mask, tokenizer=tokenizer)  # (N, C, T)
        return save_reconstruction_plot(
            inputs, recon, removed, patch_size=tokenizer.patch_size, path=path, caption=caption
        )


def _load_all(data: TimeSeriesDataConfig, tokenizer: TimeSeriesTokenizerConfig) -> list[Tensor]:
    """Every series as (C, T_total), standardized by its training part when ``data.standardize``."""
    if data.root == SYNTHETIC:
        series = synthetic_series(
            num_series=data.num_series, channels=tokenizer.channels, length=data.series_length, seed=data.seed
        )
    else:
        root = resolve_data_root(data.root, holds=f"{' or '.join(SERIES_EXTENSIONS)} files (or use {SYNTHETIC!r})")
        files = find_files(root, SERIES_EXTENSIONS)
        if not files:
            raise DataError(f"data.root: no {' or '.join(SERIES_EXTENSIONS)} files under {root}")
        series = [read_series(f, tokenizer.channels) for f in files]
    if data.standardize:
        series = [standardize(s, stats_from=_split(s, data, "train")) for s in series]
    return series


def _split(series: Tensor, data: TimeSeriesDataConfig, split: str) -> Tensor:
    """The first (1 - heldout_fraction) of the steps train, the rest is held out: no window straddles both."""
    cut = series.shape[1] - int(series.shape[1] * data.heldout_fraction)
    return series[:, :cut] if split == "train" else series[:, cut:]


@hookimpl
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    register(TimeSeriesModality())
