"""Pre-training input rate from tar shards (``data.shards``) against the same files in a folder.

Writes photograph-like 500x375 JPEGs and 10-second 340x256 H.264 clips (the files of ``jpeg_data`` and
``video_data``), packs each set with ``anymae pack``, then times the training loop's own input pipeline (the
trainer's DataLoader: ``SafeDataset`` + ``EpochSampler`` over the folder, ``ShardStream`` over the shards, the
same modality transform: RandomResizedCrop 224 for images, VideoMAE 16x4 clips at 224 px for video) with 1 and
2 DataLoader workers, folder and shards interleaved, best of ``--rounds``. Items/s per worker = items/s / workers.
Two regimes: ``warm``, every file in the page cache (a set that fits in memory, after its first epoch), and
``cold``, the files of both sources evicted from the page cache (``posix_fadvise(DONTNEED)``) before each pass, as
for a set larger than memory or on a network filesystem, where each epoch reads from the disk again.

    python -m benchmarks.shards --images 256 --videos 8 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from anymae.core.build.data_source import modality_for
from anymae.core.build.pack import pack
from anymae.core.build.shard_source import split_dataset
from anymae.core.config import resolve_config
from anymae.core.data.samples import EpochSampler, SafeDataset
from anymae.core.data.shards import ShardStream
from anymae.plugins import get_registry

from .common import markdown_table, report
from .jpeg_data import write_jpegs
from .video_data import write_clip_files

MODELS = {
    "image": {"modality": "image", "tokenizer": {"img_size": 224, "patch_size": 16}},
    "video": {"modality": "video", "tokenizer": {"num_frames": 16, "img_size": 224, "patch_size": 16,
                                                 "tubelet_size": 2}},
}  # fmt: skip


def loader(raw: dict[str, Any], *, workers: int, batch: int) -> DataLoader:
    """The trainer's DataLoader over the config's training split (folder or shards)."""
    cfg = resolve_config(raw)
    modality = modality_for(cfg.model, registry=get_registry())
    dataset = split_dataset(modality, cfg.data, cfg.model.tokenizer, split="train", training=True)
    safe = SafeDataset(dataset, seed=0)
    if isinstance(dataset, ShardStream):
        dataset.bind(rank=0, world_size=1, workers=workers, batch_size=batch, seed=0, finish=safe.finish)
        dataset.set_epoch(0)
        return DataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True)
    sampler = EpochSampler(len(dataset), batch_size=batch, seed=0)
    return DataLoader(safe, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)


def evict(root: Path) -> None:
    """Drop the page cache of every file under ``root`` (the next read comes from the disk)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rate(raw: dict[str, Any], *, workers: int, batch: int, items: int, cold: Path | None = None) -> float:
    """Items per second over the first ``items`` items (after the first batch: worker start-up excluded); with
    ``cold``, the files under it evicted from the page cache first."""
    if cold is not None:
        evict(cold)
    seen, started = 0, 0.0
    for i, batch_ in enumerate(loader(raw, workers=workers, batch=batch)):
        if i == workers - 1:  # every worker has delivered one batch
            started, seen = time.perf_counter(), 0
            continue
        seen += batch_["input"].shape[0]
        if seen >= items:
            break
    if not seen:
        raise ValueError(f"the set is too small to time {items} items after {workers} warm-up batch(es)")
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/anymae-shard-bench"))
    parser.add_argument("--images", type=int, default=256, help="JPEGs written (and packed)")
    parser.add_argument("--videos", type=int, default=8, help="clips written (and packed)")
    parser.add_argument("--image-items", type=int, default=192, help="items timed per image measurement")
    parser.add_argument("--video-items", type=int, default=8, help="items timed per video measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    registry = get_registry()
    sets = {}
    if args.images:
        write_jpegs(args.folder / "images", args.images)
        sets["image"] = (args.folder / "images", 16, args.image_items)
    if args.videos:
        write_clip_files(args.folder / "videos" / "train", args.videos, gop=25)
        sets["video"] = (args.folder / "videos", 2, args.video_items)
    rows = []
    for name, (root, batch, items) in sets.items():
        shards = args.folder / f"{name}-shards"
        pack(root / "train", shards, modality=name, registry=registry, shard_size=max(1, len(list(
            (root / "train").rglob("*.*"))) // 8), progress=False)  # fmt: skip
        base = {"model": {**MODELS[name], "embed_dim": 64, "num_heads": 2}}
        sources = {"folder": ({**base, "data": {"root": str(root)}}, root),
                   "shards": ({**base, "data": {"shards": str(shards), "shuffle_buffer": 64}}, shards)}  # fmt: skip
        for regime in ("warm", "cold") if hasattr(os, "posix_fadvise") else ("warm",):
            for workers in map(int, args.workers.split(",")):
                best = dict.fromkeys(sources, 0.0)
                for _ in range(args.rounds):  # interleaved: a load change on the machine hits both alike
                    for source, (raw, files) in sources.items():
                        cold = files if regime == "cold" else None
                        best[source] = max(best[source], rate(raw, workers=workers, batch=batch, items=items,
                                                              cold=cold))  # fmt: skip
                ratio = best["shards"] / best["folder"]
                rows.append([name, regime, str(workers), f"{best['folder'] / workers:.1f}",
                             f"{best['shards'] / workers:.1f}", f"{ratio:.2f}x"])  # fmt: skip
                print(f"{name}, {regime}, {workers} worker(s): folder {best['folder']:.1f}/s, "
                      f"shards {best['shards']:.1f}/s")  # fmt: skip
    header = ["data", "page cache", "workers", "folder (items/s per worker)", "shards (items/s per worker)",
              "shards / folder"]  # fmt: skip
    title = ("### Pre-training input from shards vs folders: 500x375 JPEGs (RandomResizedCrop 224) and 10 s "
             "340x256 H.264 (VideoMAE 16x4, 224 px)")  # fmt: skip
    report(title, markdown_table(header, rows), script="shards", results=args.results)


if __name__ == "__main__":
    main()
