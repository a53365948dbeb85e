"""The data pipeline alone: JPEG decode + RandomResizedCrop + flip + normalize, samples/s per worker.

One process, no DataLoader (a DataLoader with W workers gives at most W times this on W free cores):

- ``pil``: anymae's image dataset (PIL decode, torchvision transforms; the official pipeline too);
- ``torchvision-io``: ``torchvision.io.decode_jpeg`` on the CPU + v2 transforms on uint8 tensors;
- ``gpu-decode``: a batch decoded by nvJPEG (``decode_jpeg(device="cuda")``) and augmented on the GPU
  (CUDA only; on a CPU machine the row says "not measured: no CUDA").

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

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import InterpolationMode, v2

from .common import device_name, machine_header, markdown_table, write_section
from .jpeg_data import IMAGENET_MEAN, IMAGENET_STD, GpuJpegAugment, write_jpegs


def pil_pipeline(root: Path, size: int) -> Callable[[int], torch.Tensor]:
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    dataset = ImageModality().build_dataset(
        ImageDataConfig(root=str(root), heldout_split=None), ImageTokenizerConfig(img_size=size), split="train"
    )
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


def rate(fn: Callable[[int], object], count: int, reps: int) -> list[float]:
    fn(0)
    rates = []
    for _ in range(reps):
        started = time.perf_counter()
        for i in range(count):
            fn(i)
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
        pipelines = {
            "pil (anymae = official)": pil_pipeline(Path(tmp), args.size),
            "torchvision-io decode + v2": torchvision_io_pipeline(files, args.size),
        }
        for name, fn in pipelines.items():
            r = rate(fn, args.files, args.reps)
            rows.append([name, f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})"])
        if torch.cuda.is_available():
            device = torch.device("cuda")
            augment = GpuJpegAugment(size=args.size, device=device)
            blobs = [read_file(str(f)) for f in files]
            augment(blobs)
            torch.cuda.synchronize()
            r = []
            for _ in range(args.reps):
                started = time.perf_counter()
                augment(blobs)
                torch.cuda.synchronize()
                r.append(len(blobs) / (time.perf_counter() - started))
            rows.append(["gpu-decode (nvJPEG + GPU crop/flip/normalize, whole batch)", f"{statistics.median(r):.1f}"])
        else:
            rows.append(["gpu-decode (nvJPEG + GPU crop/flip/normalize, whole batch)", "not measured: no CUDA"])
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
