"""Data plumbing shared by every modality: reproducible samples, bad samples that never kill a long run,
and a sampler that can start in the middle of an epoch.

Training keys are ``(epoch, index)`` pairs from :class:`EpochSampler`. :class:`SafeDataset` seeds every
random generator from ``(seed, epoch, index)`` before loading a sample, so its augmentation and its mask
are the same whichever worker, rank or (resumed) process loads it: that is what makes resume exact and
the number of workers irrelevant to the result. A modality's dataset raises :class:`BadSampleError` (or
any exception) for a file it cannot read; :class:`SafeDataset` warns once per bad sample, substitutes the
next readable one deterministically and reports it, so the trainer can count bad samples over all ranks.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "BadSampleError",
    "DataError",
    "DatasetTraits",
    "DatasetWithTraits",
    "EpochSampler",
    "PairedSafeDataset",
    "SafeDataset",
    "TimedItems",
    "dataset_traits",
    "input_size",
    "sample_seed",
    "seeded",
    "to_device",
]


class DataError(RuntimeError):
    """The data cannot be used: missing, empty or too many unreadable samples."""


class BadSampleError(RuntimeError):
    """One sample could not be read or decoded; the message names the file."""


@dataclass(frozen=True)
class TimedItems:
    """Training items that are windows of longer recordings (a random clip, a random crop), declared so that a
    composite model can draw one start time for all its parts: ``span(i)`` is ``(duration, window)``
    of item ``i``'s file in seconds, ``at(i, start)`` the item with its window starting ``start`` seconds in."""

    span: Callable[[int], tuple[float, float]]
    at: Callable[[int, float], Any]


@dataclass(frozen=True)
class DatasetTraits:
    """What a dataset declares about its items beyond ``len`` and ``[]``; the defaults are a plain dataset.

    ``classes``: class names in index order (labelled datasets; the same for every split).
    ``multi_label``: labels are float ``(K,)`` multi-hot rows (BCE loss and mAP) instead of class indices.
    ``num_views``: V > 1 evaluation views per item, inputs ``(V, ...)`` whose scores are merged.
    ``samples_per_item``: S > 1 training samples stacked per item, inputs ``(S, ...)`` folded into the batch
    (VideoMAE's repeated sampling / augmentation; the label is repeated).
    ``sample_weights``: returns one weight per item, for class-balanced sampling (``balanced_sampling``).
    ``source``: the file item ``i`` is read from; a composite model's data pairs its parts' items by it (the same
    file name in each part's folder, or one media file that holds every part), else by index.
    ``timed``: the items are random windows of recordings (:class:`TimedItems`); a composite whose parts all
    declare it draws one start time for all of them, so that they stay aligned in time.
    ``from_bytes``: ``(raw, name) -> items``, the items the dataset would make of one file holding ``raw`` (named
    ``name`` for its extension and messages), decoded from memory with the generator calls of ``[]``; ``None``
    when this file must be read from disk (a format the memory path does not take). Shard samples use it instead
    of a scratch file.
    """

    classes: tuple[str, ...] = ()
    multi_label: bool = False
    num_views: int = 1
    samples_per_item: int = 1
    sample_weights: Callable[[], Sequence[float]] | None = None
    source: Callable[[int], Path] | None = None
    timed: TimedItems | None = None
    from_bytes: Callable[[bytes, Path], list[Any] | None] | None = None


class DatasetWithTraits(Dataset):
    """A dataset that declares its :class:`DatasetTraits` (as an attribute or a property named ``traits``)."""

    traits: DatasetTraits = DatasetTraits()


def dataset_traits(dataset: Dataset) -> DatasetTraits:
    """``dataset``'s declared traits; a dataset that declares none (any torch ``Dataset``) has the defaults."""
    return dataset.traits if isinstance(dataset, DatasetWithTraits) else DatasetTraits()


def to_device(x: Any, device: torch.device) -> Any:
    """A model input batch on ``device``: a tensor, or a composite model's ``{part: tensor}``."""
    if isinstance(x, dict):
        return {name: value.to(device, non_blocking=True) for name, value in x.items()}
    return x.to(device, non_blocking=True)


def input_size(x: Any) -> int:
    """N, the samples in a model input batch (a tensor or ``{part: tensor}``)."""
    return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch (a fixed integer mix: the same in every process)."""
    mixed = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    mixed ^= mixed >> 31
    return mixed % 2**63


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch (CPU), python and numpy generators seeded for one sample, then restored as they were."""
    # The CPU generator directly: torch.manual_seed would also seed every accelerator (~0.17 ms a sample).
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class SafeDataset(DatasetWithTraits):
    """Wraps a modality's dataset: seeded samples, masks drawn with them, unreadable items replaced.

    ``dataset[key]`` for ``key = (epoch, index)`` (or a plain ``index``, epoch 0) returns
    ``{"input": x, "bad": 0 or 1}`` plus ``"mask"`` (a bool (L,) tensor, True = removed) when ``mask_fn``
    is given. ``mask_fn(generator) -> mask`` is called with a generator seeded from the sample's seed;
    with ``masks_per_item = S > 1`` (datasets whose items stack S views of one file, e.g. VideoMAE's
    repeated sampling) the mask is ``(S, L)``, one independent draw per view.
    ``bad`` is 1 when item ``index`` was unreadable and the next readable item ``index+1, ...`` stands in
    (``stand_in=False``: for passes that drop such rows, e.g. feature extraction, whose warning then says the
    item is skipped, not replaced).
    More than ``max_bad_fraction`` unreadable items seen by one process stop it with :class:`DataError`
    (the trainer applies the same limit to the exact count over all workers and ranks).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        max_bad_fraction: float = 1.0,
        seed: int = 0,
        mask_fn: Callable[[torch.Generator], torch.Tensor] | None = None,
        masks_per_item: int = 1,
        stand_in: bool = True,
    ) -> None:
        self.dataset = dataset
        self.stand_in = stand_in
        self.masks_per_item = masks_per_item
        self.max_bad_fraction = max_bad_fraction
        self.seed = seed
        self.mask_fn = mask_fn
        self.bad: dict[int, str] = {}  # index -> reason, in this process (each worker knows its own)

    @property
    def traits(self) -> DatasetTraits:
        """The wrapped dataset's traits."""
        return dataset_traits(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = sample_seed(self.seed, epoch, index)
        return self.finish(*self._load(index, seed), seed)

    def finish(self, item: Any, bad: int, seed: int) -> dict[str, Any]:
        """A loaded ``item`` as the loop reads it (``bad``: 1 when it stands in for an unreadable one): the input,
        and the masks drawn from the sample's ``seed`` (also for items a stream loaded, e.g. from shards)."""
        out = {"input": item[0] if isinstance(item, (list, tuple)) else item, "bad": bad}
        if self.mask_fn is not None:
            masks = [
                self.mask_fn(torch.Generator().manual_seed((seed ^ 0x5DEECE66D) + s))
                for s in range(self.masks_per_item)
            ]
            out["mask"] = masks[0] if self.masks_per_item == 1 else torch.stack(masks)
        return out

    def _load(self, index: int, seed: int) -> tuple[Any, int]:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            try:
                # Seeded afresh for every attempt: a substitute draws the same crops whether or not this process
                # has already met the unreadable item (which may have drawn some before failing), so a resumed
                # run stays exact.
                with seeded(seed):
                    return self.dataset[i], int(step > 0)
            except Exception as exc:  # any decode failure is this sample's problem, not the run's
                reason = str(exc) if isinstance(exc, BadSampleError) else f"sample {i}: {type(exc).__name__}: {exc}"
                self.bad[i] = reason
                replaced = "; using another in its place" if self.stand_in else ""
                warnings.warn(f"skipping unreadable sample ({reason}){replaced}", stacklevel=2)
                if len(self.bad) > self.max_bad_fraction * n:
                    raise DataError(
                        f"{len(self.bad)} of {n} samples are unreadable, more than train.max_bad_fraction="
                        f"{self.max_bad_fraction} allows; first: {next(iter(self.bad.values()))}"
                    ) from None
        raise DataError(f"none of the {n} samples could be read; first: {next(iter(self.bad.values()), '')}")


class PairedSafeDataset(SafeDataset):
    """:class:`SafeDataset` for ``(input, second)`` items (a class label, a segmentation mask, a detection
    target): the same seeding and bad-sample handling, with ``second`` kept under :attr:`second_key` after
    :meth:`convert`."""

    second_key: str = "label"

    def convert(self, second: Any) -> Any:
        """The second element as the loop reads it (unchanged by default)."""
        return second

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = sample_seed(self.seed, epoch, index)
        return self.finish(*self._load(index, seed), seed)

    def finish(self, item: Any, bad: int, seed: int) -> dict[str, Any]:
        x, second = item
        return {"input": x, self.second_key: self.convert(second), "bad": bad}


class EpochSampler(Sampler):
    """``DistributedSampler`` semantics for training, yielding ``(epoch, index)`` keys.

    Each epoch is a permutation seeded by ``seed + epoch``, cut to a multiple of ``world_size x batch_size``
    (drop-last, so every rank runs the same number of batches) and dealt out rank-strided: rank ``r`` takes
    positions ``r, r + W, ...``, so step ``k`` of W ranks with batch B sees the same W*B samples as step
    ``k`` of one process with batch W*B. ``set_epoch(epoch, start_batch)`` starts inside an epoch (resume).

    ``weights`` (one per item) make an epoch ``num_samples`` (default ``size``) draws with replacement, item i
    with probability ``weights[i] / sum(weights)``, instead of a permutation (class-balanced sampling, as
    AudioMAE's weighted distributed sampler for AudioSet-2M); seeding, drop-last and striding are the same.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        self.size, self.batch_size, self.rank, self.world_size, self.seed = size, batch_size, rank, world_size, seed
        if num_samples is not None and weights is None:
            raise ValueError("num_samples is the number of weighted draws: it needs weights")
        self.draws = num_samples or size
        self.weights = None
        if weights is not None:
            self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
            if self.weights.shape != (size,) or not bool((self.weights >= 0).all()) or float(self.weights.sum()) <= 0:
                raise DataError(
                    f"sample weights must be {size} non-negative numbers (one per item) with a positive sum, "
                    f"got {tuple(self.weights.shape)} values"
                )
        self.batches_per_epoch = self.draws // (world_size * batch_size)
        if self.batches_per_epoch < 1:
            raise DataError(
                f"{self.draws} training samples cannot fill one step of train.batch_size={batch_size} on "
                f"{world_size} process(es)"
            )
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.draws, replacement=True, generator=generator)
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        mine = used[self.rank :: self.world_size][self.start_batch * self.batch_size :]
        return ((self.epoch, int(i)) for i in mine)
