"""Splits read from tar shards (the WebDataset layout) instead of a folder of files.

A shard is a tar file; one sample is the files of one key (``train/cat/cat0.jpg`` and ``train/cat/cat0.cls``:
key ``train/cat/cat0``, parts ``jpg`` and ``cls``). The ``webdataset`` library opens the shards (local paths,
``pipe:`` commands, http and everything else its ``gopen`` knows) and groups their files into samples; this
module decides which process reads which samples, in which order, and what happens to a sample that cannot be
read. A modality never sees a shard: ``decode(sample) -> items`` (given by the build room) turns one sample into
what the modality's own dataset would return for that file.

**Training** (:class:`ShardStream`, an ``IterableDataset``): the shards are dealt to ``ranks x workers`` slots,
fixed for the run and balanced by the manifest's sample counts, so that every sample is read once per epoch by
one slot; with fewer shards than slots every slot reads every shard and keeps every ``slots``-th sample. Each
slot reads its shards in an order seeded by ``(seed, epoch)`` through a shuffle buffer seeded by ``(seed, epoch,
slot)``: one seed gives one order, whatever the machine. The DataLoader takes batch ``k`` of a rank from worker
``k mod W``, so the epoch's length (:attr:`ShardStream.batches_per_epoch`) is the largest number of batches every
slot can fill; samples left over by an uneven split are said, never read twice. A resumed run skips the batches
already trained (the skipped samples are read, not decoded), so it sees the samples the uninterrupted run saw.
``data.samples_per_epoch`` defines an epoch by its size instead: a slot then reads its shards again (a new
order) when they run out.

**Evaluation** (:class:`ShardSplit`, a map-style dataset): every sample once, in shard order, read sequentially;
the k-NN, linear-probe, classifier and held-out passes read their items in index order, so nothing seeks.

**Bad data**: a sample that cannot be decoded is named (shard and key) and another sample of its batch stands in
for it (``bad = 1``, counted by the training loop); a truncated shard is named and the samples it lost are
made up by reading the slot's shards again, counted bad too; a missing local shard is refused before anything
starts, naming it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from anymae.core.data.parquet import ROW_ERROR, ParquetRows, parquet_samples
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits, sample_seed, seeded

__all__ = [
    "MANIFEST",
    "ShardSet",
    "ShardSplit",
    "ShardStream",
    "describe",
    "extract_samples",
    "is_shard_input",
    "media_parts",
    "read_samples",
    "resolve_shards",
    "sample_label",
]

MANIFEST = "manifest.json"  # written by `anymae pack`: {"shards": [{"name", "count"}], "classes": [...]}
META_PARTS = ("cls", "json", "txt")  # sample parts that are not media


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split: ``urls`` in order, ``counts`` (samples per shard, from a manifest; None when
    unknown), ``classes`` (class names in index order, from a manifest) and the config key that named them."""

    urls: tuple[str, ...]
    counts: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()
    key: str = "data.shards"
    rows: ParquetRows | None = None  # parquet files of a ``datasets`` table (data.hf_streaming), not tar files

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def resolve_shards(spec: str | Sequence[str], *, key: str) -> ShardSet:
    """``data.shards`` -> the shards: a folder (its ``*.tar``, sorted), a brace pattern
    (``/data/train-{000000..001023}.tar``), a URL or ``pipe:`` command webdataset understands, or a list of
    these. Local shards must exist (the missing ones are named); counts and classes come from the
    ``manifest.json`` beside local shards when there is one."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise DataError(f"{key}: no shards given")
    urls: list[str] = []
    for item in specs:
        path = Path(item).expanduser()
        if _is_local(item) and path.is_dir():
            found = sorted(str(p) for p in path.glob("*.tar"))
            if not found:
                raise DataError(f"{key}: folder {path} holds no .tar shards")
            urls += found
        else:
            urls += [str(Path(u).expanduser()) if _is_local(u) else u for u in wds.shardlists.expand_urls(item)]
    missing = [u for u in urls if _is_local(u) and not Path(u).is_file()]
    if missing:
        raise DataError(f"{key}: {len(missing)} of {len(urls)} shards do not exist; first: {missing[0]}")
    counts, classes = _manifest_counts(urls)
    return ShardSet(tuple(urls), counts, classes, key)


def _manifest_counts(urls: Sequence[str]) -> tuple[tuple[int, ...] | None, tuple[str, ...]]:
    """Sample counts and classes of local shards from the manifests of their folders (None: some unknown)."""
    if not all(_is_local(u) for u in urls):
        return None, ()
    counts, classes = [], ()
    manifests: dict[Path, dict[str, Any]] = {}
    for url in urls:
        folder = Path(url).parent
        if folder not in manifests:
            file = folder / MANIFEST
            manifests[folder] = json.loads(file.read_text()) if file.is_file() else {}
        manifest = manifests[folder]
        by_name = {s["name"]: s["count"] for s in manifest.get("shards", [])}
        if Path(url).name not in by_name:
            return None, tuple(manifest.get("classes", ()))
        counts.append(int(by_name[Path(url).name]))
        classes = classes or tuple(manifest.get("classes", ()))
    return tuple(counts), classes


def read_samples(
    urls: Sequence[str], errors: list[str] | None = None, *, rows: ParquetRows | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of ``urls`` in order (webdataset's opener, tar reader and grouping by key; with ``rows``, the
    rows of parquet files). A shard that cannot be opened or ends early is named in a warning and in ``errors``,
    and reading goes on with the next one."""

    def handler(exc: Exception, where: str | None = None) -> bool:
        where = where or next((str(a) for a in reversed(exc.args) if isinstance(a, str) and a in urls), "a shard")
        message = f"shard {where}: {type(exc).__name__}: {exc.args[0] if exc.args else exc}"
        if errors is not None:
            errors.append(message)
        warnings.warn(f"skipping the rest of {message}", stacklevel=2)
        return True

    if rows is not None:
        for url in urls:
            try:
                yield from parquet_samples(url, rows)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSError
                handler(exc, url)
        return
    for url in urls:
        opened = list(url_opener([{"url": url}], handler=handler))
        if not opened:
            continue
        try:
            yield from group_by_keys(tar_file_expander(opened, handler=handler), handler=handler)
        finally:
            opened[0]["stream"].close()


def is_shard_input(item: str | Path) -> bool:
    """A command-line input that names a shard (``x.tar``) or one sample of it (``x.tar#key``)."""
    return str(item).split("#", 1)[0].endswith(".tar")


def extract_samples(spec: str | Path, folder: Path) -> list[Path]:
    """``shard.tar`` (every sample) or ``shard.tar#key`` (that sample) -> its media written under ``folder`` as
    ``<key>.<ext>`` (a composite sample's parts as ``<key>.<part>.<ext>``), for commands that read files."""
    url, _, key = str(spec).partition("#")
    if _is_local(url) and not Path(url).is_file():
        raise DataError(f"input shard {url} does not exist")
    files = []
    for sample in read_samples([url]):
        if key and sample["__key__"] != key:
            continue
        for part, payload in media_parts(sample).items():
            path = folder / f"{sample['__key__']}.{part}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
            files.append(path)
        if key:
            break
    if not files:
        raise DataError(f"input {spec}: " + (f"no sample with key {key!r}" if key else "the shard holds no media"))
    return files


def media_parts(sample: dict[str, Any]) -> dict[str, bytes]:
    """A sample's media parts (name -> bytes): every part but the key, the shard and ``cls``/``json``/``txt``; a
    table row that holds no readable file raises BadSampleError saying why."""
    if ROW_ERROR in sample:
        raise BadSampleError(f"{describe(sample)}: {sample[ROW_ERROR]}")
    return {k: v for k, v in sample.items() if not k.startswith("__") and k not in META_PARTS}


def sample_label(sample: dict[str, Any]) -> int:
    """The class index a sample stores in its ``cls`` part (BadSampleError naming it when it has none)."""
    if "cls" not in sample:
        raise BadSampleError(f"{describe(sample)}: no 'cls' part (the class index) for labelled data")
    try:
        return int(sample["cls"].decode().strip())
    except ValueError:
        raise BadSampleError(f"{describe(sample)}: 'cls' is not a class index: {sample['cls'][:20]!r}") from None


def _short(text: str) -> str:
    return text if len(text) <= 60 else "..." + text[-57:]


def describe(sample: dict[str, Any]) -> str:
    """``shard <url>, key <key>``: how a message names a sample."""
    return f"shard {sample.get('__url__', '?')}, key {sample.get('__key__', '?')}"


def _reason(exc: Exception, sample: dict[str, Any]) -> str:
    """Why ``sample`` cannot be read, naming its shard and key first (a modality names the scratch file)."""
    text = str(exc) if isinstance(exc, BadSampleError) else f"{type(exc).__name__}: {exc}"
    where = describe(sample)
    return text if text.startswith(where) else f"{where}: {text}"


def _deal(shards: ShardSet, slots: int) -> list[list[int]] | None:
    """Shard indices of each slot, balanced by sample count (largest first to the lightest slot); None when
    there are fewer shards than slots (every slot then reads every shard and keeps its share of the samples)."""
    n = len(shards.urls)
    if n < slots:
        return None
    counts = shards.counts or (1,) * n
    load, dealt = [0] * slots, [[] for _ in range(slots)]
    for i in sorted(range(n), key=lambda i: (-counts[i], i)):
        s = min(range(slots), key=lambda s: (load[s], s))
        dealt[s].append(i)
        load[s] += counts[i]
    return [sorted(d) for d in dealt]


@dataclass
class _Plan:
    """How one epoch is read: each source's shards per slot, the slots' sample counts, the batches a rank runs."""

    slots: int
    dealt: list[list[list[int]] | None]  # per source: shard indices of each slot (None: every slot reads all)
    slot_counts: list[int] | None  # samples each slot holds (None: an epoch of samples_per_epoch, shards re-read)
    batches_per_epoch: int
    left_out: int = 0


def _plan(
    sources: Sequence[ShardSet], *, world_size: int, workers: int, batch_size: int, samples_per_epoch: int | None
) -> _Plan:
    slots, shards = world_size * workers, sources[0]
    dealt = [_deal(source, slots) for source in sources]
    counts = shards.counts
    if samples_per_epoch is None and len(sources) > 1:
        if any(source.counts is None for source in sources):
            raise DataError("data.sources: some shards have no manifest.json with their counts: set "
                            "data.samples_per_epoch, the samples of one epoch")  # fmt: skip
        samples_per_epoch = sum(source.total or 0 for source in sources)
    if samples_per_epoch is not None:
        plan = _Plan(slots, dealt, None, samples_per_epoch // (world_size * batch_size))
    else:
        if counts is None:
            raise DataError(
                f"{shards.key}: the shards' sample counts are unknown (no {MANIFEST} beside them, as `anymae pack` "
                "writes): set data.samples_per_epoch, the samples of one epoch"
            )
        total = sum(counts)
        if dealt[0] is None:
            slot_counts = [len(range(s, total, slots)) for s in range(slots)]
        else:
            slot_counts = [sum(counts[i] for i in d) for d in dealt[0]]
        # Worker w of a rank runs batches w, w + W, ...: the epoch ends where the emptiest slot runs out.
        batches = min(w + workers * (slot_counts[r * workers + w] // batch_size)
                      for r in range(world_size) for w in range(workers))  # fmt: skip
        batches = min(batches, total // (world_size * batch_size))
        plan = _Plan(slots, dealt, slot_counts, batches, total - batches * batch_size * world_size)
    if plan.batches_per_epoch < 1:
        raise DataError(
            f"{shards.key}: {samples_per_epoch or shards.total} samples cannot fill one step of "
            f"train.batch_size={batch_size} on {world_size} process(es) x {workers} worker(s)"
        )
    return plan


class ShardStream(IterableDataset, DatasetWithTraits):
    """The training split read from shards: an ``IterableDataset`` of one rank, yielding what the training loop's
    safe dataset makes of each item (``finish(item, bad, seed)``), batch by batch.

    Built by the build room with the shards and ``decode(sample) -> [item, ...]`` (the modality's item for the
    sample's file); the trainer calls :meth:`bind` with its rank, workers, batch size, seed and safe dataset, then
    :meth:`set_epoch` before each epoch (also inside one, on resume). ``mix``: several sources (``data.sources``),
    ``(shards, weight)`` each; every sample of a slot comes from source k with probability ``weight_k / sum``
    (drawn from a generator seeded by ``(seed, epoch, slot)``), each source read as one split alone is."""

    def __init__(
        self,
        shards: ShardSet,
        *,
        decode: Callable[[dict[str, Any]], list[Any]],
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        classes: Sequence[str] = (),
        mix: Sequence[tuple[ShardSet, float]] = (),
    ) -> None:
        self.sources = [source for source, _ in mix] or [shards]
        self.weights = [float(weight) for _, weight in mix] or [1.0]
        self.shards, self.decode, self.shuffle_buffer = shards, decode, shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.classes = list(classes or shards.classes)
        self.rank, self.world_size, self.workers, self.batch_size, self.seed = 0, 1, 1, 1, 0
        self.finish: Callable[[Any, int, int], Any] = lambda item, bad, seed: item
        self.plan: _Plan | None = None
        # (epoch, start batch) in shared memory: persistent DataLoader workers read it at each new epoch.
        self.position = multiprocessing.RawArray("q", 2)
        self.said: set[str] = set()

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(classes=tuple(self.classes))

    def __len__(self) -> int:
        """Samples of one epoch over all ranks (as planned once bound; before, the shards' count)."""
        if self.plan is not None:
            return self.plan.batches_per_epoch * self.batch_size * self.world_size
        return self.samples_per_epoch or sum(source.total or 0 for source in self.sources)

    def bind(
        self,
        *,
        rank: int,
        world_size: int,
        workers: int,
        batch_size: int,
        seed: int,
        finish: Callable[[Any, int, int], Any],
    ) -> ShardStream:
        """Plan the epochs for ``world_size`` ranks with ``workers`` DataLoader workers each (0 counts as 1) and
        ``batch_size`` per rank; ``finish(item, bad, seed)`` is the training loop's per-sample wrapping."""
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.batch_size, self.seed, self.finish = batch_size, seed, finish
        self.plan = _plan(self.sources, world_size=world_size, workers=self.workers, batch_size=batch_size,
                          samples_per_epoch=self.samples_per_epoch)  # fmt: skip
        if self.plan.left_out and rank == 0:
            print(f"{self.shards.key}: {self.plan.left_out} of {self.shards.total} samples are left out of each "
                  f"epoch (a different share each epoch): the shards split unevenly over {world_size} rank(s) x "
                  f"{self.workers} worker(s) in batches of {batch_size}", flush=True)  # fmt: skip
        return self

    @property
    def batches_per_epoch(self) -> int:
        if self.plan is None:
            raise RuntimeError("ShardStream.bind() first")
        return self.plan.batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch}]")
        self.position[0], self.position[1] = epoch, start_batch
        if len(self.sources) > 1 and self.rank == 0 and start_batch == 0:
            drawn = self.drawn(epoch)
            shares = ", ".join(
                f"{_short(s.urls[0])}: {100 * n / sum(drawn):.1f}%" for s, n in zip(self.sources, drawn, strict=True)
            )
            weights = ":".join(f"{w:g}" for w in self.weights)
            print(f"data.sources: epoch {epoch + 1} draws {shares} (weights {weights})", flush=True)

    def drawn(self, epoch: int) -> list[int]:
        """Samples each source gives epoch ``epoch`` over all ranks and workers (the realised proportions)."""
        counts = [0] * len(self.sources)
        for slot in range(self.world_size * self.workers):
            role = slot % self.workers
            draws = self._draws(slot, epoch)
            for _ in range(len(range(role, self.batches_per_epoch, self.workers)) * self.batch_size):
                counts[next(draws)] += 1
        return counts

    @property
    def epoch(self) -> int:
        return int(self.position[0])

    @property
    def start_batch(self) -> int:
        return int(self.position[1])

    # --- one worker ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise DataError(f"ShardStream planned for {self.workers} workers, run by {info.num_workers}")
        epoch, start = self.epoch, self.start_batch
        # The DataLoader takes a rank's first batch of an iteration from worker 0, then 1, ...: resumed at batch
        # ``start``, worker w plays the slot of batches start + w, start + w + W, ...
        role = (worker + start) % self.workers
        slot = self.rank * self.workers + role
        batches = len(range(role, self.batches_per_epoch, self.workers))
        skip = len(range(role, start, self.workers))
        raw = self._slot_samples(slot, epoch)
        for _ in range(skip * self.batch_size):  # read, not decoded: the resumed run's position
            next(raw)
        for _ in range(batches - skip):
            yield from self._batch([next(raw) for _ in range(self.batch_size)], epoch)

    def _draws(self, slot: int, epoch: int) -> Iterator[int]:
        """The source of each of a slot's samples in ``epoch``."""
        rng = random.Random(sample_seed(self.seed ^ 0x5A5A, epoch, slot))
        indices = range(len(self.sources))
        while True:
            yield rng.choices(indices, weights=self.weights)[0]

    def _slot_samples(self, slot: int, epoch: int) -> Iterator[tuple[dict[str, Any], bool]]:
        """``(sample, repeated)``: the slot's samples of this epoch; from several sources, each sample from the
        source drawn for it."""
        if len(self.sources) == 1:
            yield from self._source_samples(0, slot, epoch)
            return
        streams = [self._source_samples(k, slot, epoch) for k in range(len(self.sources))]
        for k in self._draws(slot, epoch):
            yield next(streams[k])

    def _source_samples(self, source: int, slot: int, epoch: int) -> Iterator[tuple[dict[str, Any], bool]]:
        """``(sample, repeated)``: a source's samples for the slot, each pass over its shards through its own
        seeded shuffle buffer, endless (the shards again, in a new order, when they run out; ``repeated`` when the
        shards' counts are known and a pass makes up for samples they lost)."""
        plan = self.plan
        assert plan is not None
        held = plan.slot_counts[slot] if plan.slot_counts is not None else None
        n = 0
        for rereads in range(1_000_000):
            errors: list[str] = []
            ordered = self._pass(source, slot, epoch, rereads, errors)
            if self.shuffle_buffer > 1:
                rng = random.Random(sample_seed(self.seed + source, epoch, slot * 1_000_003 + rereads))
                shuffle = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
                ordered = shuffle(ordered)
            found = 0
            for sample in ordered:
                found += 1
                # Counts known: a second reading makes up for samples the shards lost (a truncated shard).
                yield sample, held is not None and (rereads > 0 or n >= held)
                n += 1
            if found == 0:
                raise DataError(f"{self.sources[source].key}: no sample could be read from the shards of slot "
                                f"{slot}: {errors[0] if errors else 'they are empty'}")  # fmt: skip
        raise DataError(f"{self.sources[source].key}: read the shards of slot {slot} a million times in one epoch")

    def _pass(self, source: int, slot: int, epoch: int, rereads: int, errors: list[str]) -> Iterator[dict[str, Any]]:
        """One reading of the slot's shards of ``source``, in the order of ``(seed, epoch, rereads)``: with fewer
        shards than slots every slot reads the same order and keeps its own positions."""
        plan = self.plan
        assert plan is not None
        urls, dealt = self.sources[source].urls, plan.dealt[source]
        order = list(range(len(urls)) if dealt is None else dealt[slot])
        random.Random(sample_seed(self.seed + source, epoch, -1 - rereads)).shuffle(order)
        rows = self.sources[source].rows
        for position, sample in enumerate(read_samples([urls[i] for i in order], errors, rows=rows)):
            if dealt is None and position % plan.slots != slot:
                continue
            yield sample

    def _batch(self, samples: list[tuple[dict[str, Any], bool]], epoch: int) -> Iterator[Any]:
        """One batch's items: a sample that cannot be decoded is replaced by another item of the batch and marked
        bad; one read again to make up for samples a truncated shard lost is marked bad too."""
        decoded: list[tuple[Any, int, int] | None] = []
        for sample, repeated in samples:
            seed = sample_seed(self.seed, epoch, zlib.crc32(str(sample.get("__key__")).encode()))
            try:
                with seeded(seed):
                    items = self.decode(sample)
            except Exception as exc:  # one sample's problem, not the run's
                reason = _reason(exc, sample)
                warnings.warn(f"skipping unreadable sample ({reason}); using another in its place", stacklevel=2)
                decoded.append(None)
                continue
            if len(items) != 1:
                raise DataError(
                    f"{self.shards.key}: the modality's training set makes {len(items)} items of one file (a "
                    "repeats key?); with shards, an epoch's size is data.samples_per_epoch"
                )
            decoded.append((items[0], seed, int(repeated)))
            if repeated and "repeated" not in self.said:
                self.said.add("repeated")
                warnings.warn(f"{self.shards.key}: slot shards ran out early (a truncated shard?): samples are read "
                              "again and counted bad", stacklevel=2)  # fmt: skip
        good = [d for d in decoded if d is not None]
        if not good:
            raise DataError(f"{self.shards.key}: no sample of a batch of {len(samples)} could be read; first: "
                            f"{describe(samples[0][0])}")  # fmt: skip
        for i, d in enumerate(decoded):
            item, seed, bad = d if d is not None else (*good[i % len(good)][:2], 1)
            yield self.finish(item, bad, seed)


@dataclass
class _Reader:
    """A sequential position in a :class:`ShardSplit`: the open sample iterator and the next sample's index."""

    samples: Iterator[dict[str, Any]] | None = None
    pid: int = 0  # the process that opened ``samples`` (a forked DataLoader worker opens its own)
    position: int = 0
    current: dict[str, Any] | None = None
    items: list[Any] = field(default_factory=list)


class ShardSplit(DatasetWithTraits):
    """A split read from shards for a pass in order (evaluation, feature extraction): item ``i`` is view
    ``i mod V`` of sample ``i // V`` (V: the items the modality makes of one file, e.g. held-out zooms), read
    sequentially; an earlier index restarts the reading. ``len`` needs the sample count: the manifest's, else
    one reading pass counts the samples (said once)."""

    def __init__(
        self,
        shards: ShardSet,
        *,
        decode: Callable[[dict[str, Any]], list[Any]],
        classes: Sequence[str] = (),
        views: int | None = None,
    ) -> None:
        self.shards, self.decode, self.classes = shards, decode, list(classes or shards.classes)
        self.count = shards.total
        if self.count is None:
            print(f"{shards.key}: counting the samples of {len(shards.urls)} shards (no {MANIFEST})", flush=True)
            self.count = sum(1 for _ in read_samples(shards.urls, rows=shards.rows))
        if self.count == 0:
            raise DataError(f"{shards.key}: the shards hold no samples")
        self.views = views if views is not None else len(self._decode(self._first()))
        self.reader = _Reader()

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(classes=tuple(self.classes))

    def _first(self) -> dict[str, Any]:
        first = next(iter(read_samples(self.shards.urls[:1], rows=self.shards.rows)), None)
        if first is None:
            raise DataError(f"{self.shards.key}: cannot read a sample from {self.shards.urls[0]}")
        return first

    def _decode(self, sample: dict[str, Any]) -> list[Any]:
        try:
            return self.decode(sample)
        except Exception as exc:
            raise BadSampleError(_reason(exc, sample)) from exc

    def __len__(self) -> int:
        return self.count * self.views  # type: ignore[operator]

    def __getitem__(self, i: int) -> Any:
        index, view = divmod(i, self.views)
        reader = self.reader
        # position - 1: the current sample's index
        if reader.samples is None or index < reader.position - 1 or reader.pid != os.getpid():
            reader.samples, reader.position, reader.current = (
                read_samples(self.shards.urls, rows=self.shards.rows),
                0,
                None,
            )
            reader.pid = os.getpid()
        while reader.position <= index:
            reader.current = next(reader.samples, None)
            reader.position += 1
            reader.items = []
            if reader.current is None:
                reader.samples = None
                raise BadSampleError(f"{self.shards.key}: sample {index} is missing (the shards hold fewer "
                                     f"samples than their manifest says: a truncated shard?)")  # fmt: skip
        if not reader.items:
            reader.items = self._decode(reader.current)  # type: ignore[arg-type]
        return reader.items[view]
