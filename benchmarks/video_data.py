"""Per-process video pre-training input rate, against plain PyAV decoding (issue 20).

Writes 10-second 340x256 H.264 files (libx264, B-frames on, as re-encoded Kinetics clips) with a 1-second GOP
and with x264's default 250-frame GOP, then times, on the same files and interleaved in one run:

- ``plain``: PyAV decoding from the file's start to the last frame of one clip at VideoMAE's 16x4 sampling
  (PyAV's ``AUTO`` threads, no transforms, no RGB conversion): what any loader that does not seek pays;
- ``plain-slice``: the same with slice threading only, the threading anymae's decoder uses (frame threading is
  slower per process on 2 cores), so that the ratio is also shown against the faster plain decode;
- ``anymae``: ``anymae``'s pre-training dataset item (``VideoClips`` of ``demo_video``-style config at 16x4
  and 224 px: probe, sample, decode, VideoMAE's multi-scale crop + flip + normalize), one process.

    python -m benchmarks.video_data --files 6 --items 24 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import av
import numpy as np

from anymae.modalities.video.decode import clip_indices, clip_starts

from .common import markdown_table, report

FPS = 25
SECONDS = 10
SIZE = (256, 340)  # H, W
NUM_FRAMES, SAMPLING_RATE = 16, 4


def write_clip_files(folder: Path, count: int, *, gop: int, seed: int = 0) -> list[Path]:
    """``count`` 10-second 340x256 H.264 files with keyframes every ``gop`` frames (B-frames on)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        paths.append(path)
        if path.is_file():
            continue
        base = rng.uniform(40, 200, size=3)
        frames = np.empty((FPS * SECONDS, h, w, 3), dtype=np.uint8)
        noise = rng.normal(0, 12, size=(h, w, 3))
        for t in range(FPS * SECONDS):  # a moving gradient and a moving disc: motion the encoder must code
            cx, cy = (40 + 3 * t) % w, h / 2 + 60 * np.sin(t / 15)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < 30**2)[..., None]
            image = base + 40 * np.sin((xx[..., None] + 2 * t) / 25) + noise
            frames[t] = np.clip(np.where(disc, 255 - base, image), 0, 255).astype(np.uint8)
        _write_h264(path, frames, gop=gop)
    return paths


def _write_h264(path: Path, frames: np.ndarray, *, gop: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # A fixed B-frame pattern (x264 would drop B-frames on this simple content): 3 B-frames, pyramid.
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:b-adapt=0:b-pyramid=normal"
        stream.options = {"crf": "23", "preset": "veryfast", "x264-params": params}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def plain_decode(path: Path, rng: np.random.Generator, *, thread_type: str = "AUTO") -> int:
    """Decode from the start to one random 16x4 clip's last frame (PyAV, threads, no conversion); the frame count
    comes from the container's header, as a loader that does not demux first would take it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        grid = stream.frames or round(float(stream.duration * stream.time_base) * FPS)
        span = {"num_frames": NUM_FRAMES, "sampling_rate": SAMPLING_RATE}
        start = clip_starts(grid, **span, num_clips=1, mode="random", rng=rng)[0]
        last = clip_indices(grid, start=start, **span)[-1]
        for count, _ in enumerate(container.decode(stream), start=1):
            if count > last:
                return count
    return count


def anymae_dataset(files: list[Path]):
    """``VideoClips`` as ``anymae pretrain`` builds it for VideoMAE's 16x4 sampling at 224 px."""
    from anymae.core.config import from_dict
    from anymae.plugins import get_registry

    modality = get_registry().modality("video")
    root = files[0].parent.parent
    data = from_dict(
        modality.data_config,
        {"root": str(root), "train_split": files[0].parent.name, "sampling_rate": SAMPLING_RATE},
        "data",
    )
    tokenizer = from_dict(
        modality.tokenizer_config, {"num_frames": NUM_FRAMES, "img_size": 224, "patch_size": 16}, "model.tokenizer"
    )
    return modality.build_dataset(data, tokenizer, split="train")


def measure(files: list[Path], *, items: int, rounds: int = 3) -> dict[str, float]:
    """Items per second of each path on ``files``, interleaved over ``rounds`` (median of the rounds)."""
    import torch

    torch.set_num_threads(1)  # one DataLoader worker's share
    dataset = anymae_dataset(files)
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {"plain": [], "plain-slice": [], "anymae": []}
    for _ in range(rounds):
        for name, thread_type in (("plain", "AUTO"), ("plain-slice", "SLICE")):
            begin = time.perf_counter()
            for i in range(items):
                plain_decode(files[i % len(files)], rng, thread_type=thread_type)
            rates[name].append(items / (time.perf_counter() - begin))
        begin = time.perf_counter()
        for i in range(items):
            dataset[i % len(dataset)]
        rates["anymae"].append(items / (time.perf_counter() - begin))
    return {name: float(np.median(values)) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/anymae-video-bench"))
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--items", type=int, default=24, help="items per path and round")
    parser.add_argument("--label", default="", help="a name for this code state in the table (e.g. before/after)")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    rows = []
    for gop in (FPS, 250):
        files = write_clip_files(args.folder / f"gop{gop}" / "train", args.files, gop=gop)
        rates = measure(files, items=args.items)
        ratio, ratio_slice = rates["anymae"] / rates["plain"], rates["anymae"] / rates["plain-slice"]
        rows.append(
            [args.label, str(gop)]
            + [f"{rates[name]:.1f}" for name in ("plain", "plain-slice", "anymae")]
            + [f"{ratio:.2f}x", f"{ratio_slice:.2f}x"]
        )
        print(f"GOP {gop}: plain {rates['plain']:.1f} clips/s, anymae {rates['anymae']:.1f} clips/s, {ratio:.2f}x")
    header = [
        "code",
        "GOP (frames)",
        "plain PyAV decode to clip end, AUTO threads (clips/s)",
        "the same, slice threads (clips/s)",
        "anymae item (clips/s)",
        "ratio to plain",
        "ratio to plain, slice threads",
    ]
    title = "### Video pre-training input, one process: 10 s 340x256 H.264 (3 B-frames), 16x4 sampling, 224 px"
    section = f"video_data-{args.label}" if args.label else "video_data"  # before/after: a section each
    report(title, markdown_table(header, rows), script=section, results=args.results)


if __name__ == "__main__":
    main()
