"""End-to-end pre-training throughput: JPEG files on disk -> decode + augment -> training step.

The JPEGs are written to a temporary folder first. Variants, timed in alternating repetitions:

- ``reference``: the official pipeline (``torchvision.datasets.ImageFolder``, RandomResizedCrop(0.2-1,
  bicubic) + flip + normalize, ``DataLoader(num_workers=W, drop_last=True)``) feeding the eager reference step;
- ``optimized``: anymae's image dataset and loader options (persistent workers, prefetch, pinned memory on
  CUDA) feeding anymae's optimized step;
- ``optimized+decode=gpu``: the same with ``data.decode: gpu``: workers only read bytes and draw the crop
  boxes; the training device decodes (nvJPEG on CUDA, libjpeg-turbo on the CPU) and crops, flips and
  normalizes the batch: the engine's path, measured on any device. It includes ``SafeDataset``'s per-sample
  seeding (which its collate needs; about 0.8 ms per sample on the 2-core CPU), which ``optimized`` skips.

    python -m benchmarks.e2e --arch vit_b16 --batch 8 --workers 2 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from .common import ARCHS, SHAPE_NAMES, build_runner, device_name, machine_header, markdown_table, write_section
from .jpeg_data import IMAGENET_MEAN, IMAGENET_STD, write_jpegs


def _forever(loader: DataLoader) -> Iterator:
    while True:  # a new epoch starts workers again unless they are persistent
        yield from loader


def reference_batches(root: Path, *, size: int, batch: int, workers: int, device: torch.device) -> Iterator:
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    return (x.to(device, non_blocking=True) for x, _ in _forever(loader))


def anymae_batches(root: Path, *, size: int, batch: int, workers: int, prefetch: int, device: torch.device) -> Iterator:
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    dataset = ImageModality().build_dataset(
        ImageDataConfig(root=str(root), heldout_split=None), ImageTokenizerConfig(img_size=size), split="train"
    )
    loader = DataLoader(
        dataset,  # the engine wraps it in SafeDataset (bad-file substitution), which costs nothing per sample
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        drop_last=True,
    )
    return (x.to(device, non_blocking=True) for x in _forever(loader))


def device_decode_batches(root: Path, *, size: int, batch: int, workers: int, device: torch.device) -> Iterator:
    """``data.decode: gpu`` as the engine runs it: SafeDataset items (per-sample seeds), the modality's collate
    in the workers and its ``device_transform`` per batch in this process."""
    from anymae.core.data.samples import SafeDataset
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    modality, tokenizer = ImageModality(), ImageTokenizerConfig(img_size=size)
    data = ImageDataConfig(root=str(root), heldout_split=None, decode="gpu")
    stage = modality.device_transform(data, tokenizer, device=device)
    loader = DataLoader(
        SafeDataset(modality.build_dataset(data, tokenizer, split="train")),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=stage.collate,
        drop_last=True,
    )
    return (stage(b) for b in _forever(loader))


def time_e2e(
    pairs: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Iterator]],
    *,
    batch: int,
    reps: int,
    steps: int,
    warmup: int,
) -> dict[str, list[float]]:
    names = list(pairs)
    for step, batches in pairs.values():
        for _ in range(warmup):
            step(next(batches))
    rates: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            step, batches = pairs[name]
            started = time.perf_counter()
            for _ in range(steps):
                loss = step(next(batches))
            float(loss)
            rates[name].append(steps * batch / (time.perf_counter() - started))
    return rates


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.arch, args.batch, args.files, args.reps, args.steps = "tiny", 4, 16, 2, 2
        args.jpeg_size, args.workers = (120, 90), 0  # no worker start-up: seconds, not a measurement
    device = torch.device(args.device)
    size = ARCHS[args.arch]["tokenizer"]["img_size"]
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.files, size=tuple(args.jpeg_size))
        ref = build_runner("reference", args.arch, device=device)
        opt = build_runner(args.optimized, args.arch, device=device)
        pairs = {
            "reference": (
                ref.step,
                reference_batches(root, size=size, batch=args.batch, workers=args.workers, device=device),
            ),
            args.optimized: (
                opt.step,
                anymae_batches(
                    root, size=size, batch=args.batch, workers=args.workers, prefetch=args.prefetch, device=device
                ),
            ),
        }
        batches = device_decode_batches(root, size=size, batch=args.batch, workers=args.workers, device=device)
        pairs[f"{args.optimized}+decode=gpu (decoded on {device.type})"] = (opt.step, batches)
        rates = time_e2e(pairs, batch=args.batch, reps=args.reps, steps=args.steps, warmup=args.warmup)
    base = statistics.median(rates["reference"])
    config = f"{SHAPE_NAMES.get(args.arch, args.arch)}, batch {args.batch}, {args.workers} workers"
    for name, r in rates.items():
        med = statistics.median(r)
        rows.append([config, name, f"{med:.3f} ({min(r):.3f}-{max(r):.3f})", f"{med / base:.2f}x"])
    table = markdown_table(["config", "variant", "samples/s median (min-max)", "vs reference"], rows)
    print(table)
    if args.results:
        command = "python -m benchmarks.e2e " + " ".join(argv if argv is not None else sys.argv[1:])
        body = (
            f"### End-to-end from JPEG files ({args.files} files {args.jpeg_size[0]}x{args.jpeg_size[1]}, "
            f"{args.reps} alternating repetitions x {args.steps} steps)\n\n"
            f"{machine_header(device)}; {torch.get_num_threads()} torch threads\n\n`{command}`\n\n{table}\n"
        )
        write_section(Path(args.results), machine=device_name(device), script=f"e2e-{args.arch}", markdown=body)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_b16", choices=sorted(ARCHS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimized", default="optimized", help="the anymae variant to compare (see benchmarks.common)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--jpeg-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--results")
    p.add_argument("--quick", action="store_true", help="tiny model and files: checks the harness in seconds")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
