"""The data pipeline alone: JPEG decode + RandomResizedCrop + flip + normalize, samples/s per worker.

One process, no DataLoader (a DataLoader with W workers gives at most W times this on W free cores):

- ``pil``: anymae's image dataset with ``data.decode: pil`` (PIL decode, torchvision transforms on PIL images: the
  official pipeline);
- ``cpu``: anymae's default, ``data.decode: cpu`` (``torchvision.io.decode_jpeg`` and uint8 tensor transforms in
  the worker, the PIL path's crop boxes and flips);
- ``torchvision-io``: ``torchvision.io.decode_jpeg`` on the CPU + v2 transforms on uint8 tensors (no anymae);
- ``data.decode: gpu`` (anymae's option, ``anymae.modalities.image.device_decode``), in its two halves: what
  a worker still does per sample (read the bytes, read the header, draw the crop box), and the device's
  per-batch decode + crop/flip/normalize, timed on the CPU always (``decode_jpeg`` with libjpeg-turbo: one
  thread) and on CUDA when there is one (nvJPEG; "not measured: no CUDA" otherwise).

    python -m benchmarks.data --files 64 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import InterpolationMode, v2

from anymae.core.data.samples import SafeDataset

from .common import device_name, machine_header, markdown_table, write_section
from .jpeg_data import IMAGENET_MEAN, IMAGENET_STD, write_jpegs


def anymae_pipeline(root: Path, size: int, decode: str) -> Callable[[int], torch.Tensor]:
    """anymae's pre-training dataset with ``data.decode: <decode>`` (``pil`` or ``cpu``)."""
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    data = ImageDataConfig(root=str(root), heldout_split=None, decode=decode)
    dataset = ImageModality().build_dataset(data, ImageTokenizerConfig(img_size=size), split="train")
    return dataset.__getitem__


def torchvision_io_pipeline(files: list[Path], size: int) -> Callable[[int], torch.Tensor]:
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return lambda i: transform(decode_jpeg(read_file(str(files[i % len(files)])), mode=ImageReadMode.RGB))


def rates(pipelines: dict[str, Callable[[int], object]], count: int, reps: int) -> dict[str, list[float]]:
    """Samples/s of each pipeline over ``count`` items, ``reps`` passes interleaved (pass k of every pipeline
    before pass k + 1 of any), so that the machine's other load falls on all of them alike."""
    for fn in pipelines.values():
        fn(0)
    out: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(reps):
        for name, fn in pipelines.items():
            started = time.perf_counter()
            for i in range(count):
                fn(i)
            out[name].append(count / (time.perf_counter() - started))
    return out


def device_decode_pipeline(root: Path, size: int) -> tuple[Dataset, Callable[[torch.device], Any]]:
    """``data.decode: gpu``: the worker half (the "train" dataset: index -> bytes + crop box) and the device
    half (``device_transform``: ``collate`` and the per-batch call) for a given device."""
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    modality, tokenizer = ImageModality(), ImageTokenizerConfig(img_size=size)
    data = ImageDataConfig(root=str(root), heldout_split=None, decode="gpu")
    dataset = modality.build_dataset(data, tokenizer, split="train")
    return dataset, lambda device: modality.device_transform(data, tokenizer, device=device)


def batch_rate(
    stage: Callable[[dict], torch.Tensor], batch: dict, count: int, reps: int, device: torch.device
) -> list[float]:
    """Samples/s of ``stage(batch)`` (a whole batch per call), synchronized on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stage(batch)
    sync()
    rates = []
    for _ in range(reps):
        started = time.perf_counter()
        stage(batch)
        sync()
        rates.append(count / (time.perf_counter() - started))
    return rates


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.files, args.size, args.reps, args.jpeg_size = 8, 32, 2, (120, 90)
    torch.set_num_threads(1)  # one worker = one core, as a DataLoader worker runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.files, size=tuple(args.jpeg_size))
        pil_name, cpu_name = "pil (anymae = official)", "cpu (anymae default: torchvision.io decode, uint8 transforms)"
        pipelines = {
            pil_name: anymae_pipeline(Path(tmp), args.size, "pil"),
            cpu_name: anymae_pipeline(Path(tmp), args.size, "cpu"),
            "torchvision-io decode + v2 (no anymae)": torchvision_io_pipeline(files, args.size),
        }
        worker, device_half = device_decode_pipeline(Path(tmp), args.size)
        pipelines["decode=gpu, worker half (read bytes + header + crop box)"] = worker.__getitem__
        measured = rates(pipelines, args.files, args.reps)
        for name, values in measured.items():
            rows.append([name, _summary(values)])
        ratio = statistics.median(measured[cpu_name]) / statistics.median(measured[pil_name])
        rows.append(["decode=cpu / decode=pil", f"{ratio:.2f}x"])
        items = SafeDataset(worker)  # the engine's items: per-sample seeds, bad-file substitution
        batch = device_half(torch.device("cpu")).collate([items[i] for i in range(args.files)])
        for device in (torch.device("cpu"), torch.device("cuda")):
            name = f"decode=gpu, device half on {device.type} (decode + crop/flip/normalize, whole batch)"
            if device.type == "cuda" and not torch.cuda.is_available():
                rows.append([name, "not measured: no CUDA"])
                continue
            rows.append([name, _summary(batch_rate(device_half(device), batch, args.files, args.reps, device))])
    table = markdown_table(["pipeline", "samples/s per worker, median (min-max)"], rows)
    print(table)
    if args.results:
        device = torch.device("cpu")
        command = "python -m benchmarks.data " + " ".join(argv if argv is not None else sys.argv[1:])
        body = (
            f"### Data pipeline alone ({args.files} JPEGs {args.jpeg_size[0]}x{args.jpeg_size[1]} -> "
            f"{args.size}px, {args.reps} passes, 1 thread)\n\n{machine_header(device)}\n\n`{command}`\n\n{table}\n"
        )
        machine = device_name(torch.device("cuda")) if torch.cuda.is_available() else device_name(device)
        write_section(Path(args.results), machine=machine, script="data", markdown=body)
    return 0


def _summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--jpeg-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--size", type=int, default=224, help="crop size")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--results")
    p.add_argument("--quick", action="store_true")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
