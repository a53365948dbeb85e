"""Data plumbing shared by every modality: bad samples never kill a long run.

A modality's dataset raises :class:`BadSampleError` (or any exception) for a file it cannot read;
:class:`SafeDataset` warns once per bad sample, substitutes the next good sample deterministically, counts
them and stops cleanly with :class:`DataError` once more than ``max_bad_fraction`` of the data is bad.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import Dataset

__all__ = ["BadSampleError", "DataError", "SafeDataset"]


class DataError(RuntimeError):
    """The data cannot be used: missing, empty or too many unreadable samples."""


class BadSampleError(RuntimeError):
    """One sample could not be read or decoded; the message names the file."""


class SafeDataset(Dataset):
    """Wraps a dataset; item ``i`` that fails is replaced by the next readable item ``i+1, i+2, ...``."""

    def __init__(self, dataset: Dataset, *, max_bad_fraction: float) -> None:
        self.dataset = dataset
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[int, str] = {}  # index -> reason, in this process (each worker counts its own)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                return self.dataset[i]
            except Exception as exc:  # any decode failure is this sample's problem, not the run's
                reason = str(exc) if isinstance(exc, BadSampleError) else f"sample {i}: {type(exc).__name__}: {exc}"
                self.bad[i] = reason
                warnings.warn(f"skipping unreadable sample ({reason}); using another in its place", stacklevel=2)
                if len(self.bad) > self.max_bad_fraction * n:
                    raise DataError(
                        f"{len(self.bad)} of {n} samples are unreadable, more than max_bad_fraction="
                        f"{self.max_bad_fraction} allows; first: {next(iter(self.bad.values()))}"
                    ) from None
        raise DataError(f"none of the {n} samples could be read; first: {next(iter(self.bad.values()), '')}")
