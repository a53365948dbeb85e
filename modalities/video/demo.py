"""``builtin:demo_videos``: small synthetic videos generated once, deterministically, at first use.

Each video is a shaded background with broad drifting bands of light and two or three textured objects
(checkered squares, shaded discs) moving at constant velocity and bouncing off the borders: motion and texture
a video MAE can learn to predict, unlike static noise. Written with PyAV (H.264, or MPEG-4 part 2 when
this FFmpeg has no libx264) into ``$ANYMAE_CACHE`` (default ``~/.cache/anymae``)/``demo_videos-v4``,
``train/`` and ``heldout/``; a temporary folder is renamed into place so a half-written set is never used.

``builtin:demo_motion`` is the labelled companion for ``anymae finetune`` / ``linprobe``: the same kind of videos,
but four to six objects of a video all move in one direction (the class: ``right``, ``left``, ``down`` or ``up``) and
wraps around the borders instead of bouncing, in ``demo_motion-v1/{train,heldout}/<class>/``. Telling the classes
apart needs motion, not appearance; a horizontal flip swaps ``left`` and ``right``, so its configs do not flip.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from anymae.core.data.files import cache_dir, generate_once

from .audiovisual_demo import AUDIOVISUAL_DEMO_ROOT, demo_audiovisual_root
from .decode import write_video

__all__ = [
    "BUILTIN_DEMO_ROOT",
    "DEMO_ROOTS",
    "MOTION_DEMO_ROOT",
    "demo_motion_root",
    "demo_videos_root",
    "make_demo_video",
    "resolve_root",
]

BUILTIN_DEMO_ROOT = "builtin:demo_videos"
VERSION = "v4"  # bump when the generator changes, so old caches are not reused
SIZE = (48, 48)  # H, W: larger than the demo's 32x32 crops so that the multi-scale crop has room
FRAMES, FPS = 24, 10
NUM_TRAIN, NUM_HELDOUT = 128, 8  # many short videos: 32 were memorised, not generalised from

MOTION_DEMO_ROOT = "builtin:demo_motion"
MOTION_VERSION = "v1"  # bump when the labelled generator changes
MOTIONS = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}  # (dy, dx) per class
MOTION_TRAIN, MOTION_HELDOUT = 64, 8  # videos per class
MOTION_SEED = 10_000  # seeds of the labelled videos start here, apart from the unlabelled set's


def make_demo_video(
    seed: int,
    *,
    size: tuple[int, int] = SIZE,
    frames: int = FRAMES,
    direction: tuple[float, float] | None = None,
) -> np.ndarray:
    """uint8 (frames, H, W, 3) video number ``seed``: a shaded background with broad drifting bands of light and
    two or three moving objects (checkered squares, shaded discs) that bounce off the borders.

    With ``direction`` (a unit (dy, dx)) two or three more objects are added, all move that way at 1.5 to 2.5
    pixels a frame and wrap around the borders (the labelled motion demo); without it the random draws, and so
    the videos, are those of the unlabelled demo set.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    tint = rng.uniform(-0.25, 0.25, size=3).astype(np.float32)
    ramp_angle, stripe_angle = rng.uniform(0, 2 * np.pi, size=2)
    ramp = ((xs * np.cos(ramp_angle) + ys * np.sin(ramp_angle)) / max(h, w))[..., None]
    period = rng.uniform(64, 96)  # wider than the frame: broad moving shading, not fine stripes
    drift = rng.uniform(-2.0, 2.0)
    objects = [_random_object(rng, h, w) for _ in range(int(rng.integers(2, 4)))]
    if direction is not None:  # more objects (so crops rarely miss them), all moving the same way
        objects += [_random_object(rng, h, w) for _ in range(int(rng.integers(2, 4)))]
        for obj in objects:
            obj["vel"] = np.asarray(direction, dtype=np.float64) * rng.uniform(1.5, 2.5)
    video = np.empty((frames, h, w, 3), dtype=np.uint8)
    for f in range(frames):
        phase = (xs * np.cos(stripe_angle) + ys * np.sin(stripe_angle) + drift * f) * (2 * np.pi / period)
        image = base + tint * ramp + 0.2 * np.sin(phase)[..., None]
        for obj in objects:
            (cy, cx), r = obj["pos"], obj["radius"]
            dy, dx = ys - cy, xs - cx
            if direction is not None:  # offsets on the torus: an object leaving one border enters the other
                dy, dx = (dy + h / 2) % h - h / 2, (dx + w / 2) % w - w / 2
            if obj["square"]:
                inside = (np.abs(dy) < r) & (np.abs(dx) < r)
                checker = (np.floor((dy + r) / 4) + np.floor((dx + r) / 4)) % 2
                shaded = obj["colour"] * (0.65 + 0.35 * checker[..., None])
            else:
                dist2 = (dy**2 + dx**2) / r**2
                inside = dist2 < 1
                shaded = obj["colour"] * (1.0 - 0.6 * dist2[..., None])
            image = np.where(inside[..., None], shaded, image)
            obj["pos"] = obj["pos"] + obj["vel"]
            if direction is not None:
                obj["pos"] = obj["pos"] % (h, w)
                continue
            for axis, limit in enumerate((h, w)):  # bounce off the borders
                if not r <= obj["pos"][axis] <= limit - r:
                    obj["vel"][axis] *= -1
                    obj["pos"][axis] = np.clip(obj["pos"][axis], r, limit - r)
        video[f] = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return video


def _complete(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "heldout").is_dir()


def _write_unlabelled(staging: Path) -> None:
    for i in range(NUM_TRAIN + NUM_HELDOUT):
        split = "train" if i < NUM_TRAIN else "heldout"
        write_video(staging / split / f"demo{i:03d}.mp4", make_demo_video(i), fps=FPS)


def _write_motion(staging: Path) -> None:
    seed = MOTION_SEED
    for split, count in (("train", MOTION_TRAIN), ("heldout", MOTION_HELDOUT)):
        for _ in range(count):
            for name, direction in MOTIONS.items():
                video = make_demo_video(seed, direction=direction)
                write_video(staging / split / name / f"{name}{seed:05d}.mp4", video, fps=FPS)
                seed += 1


def _random_object(rng: np.random.Generator, h: int, w: int) -> dict:
    """A checkered square or shaded disc of radius 6-10 at a random place, with a random velocity."""
    radius = rng.uniform(6, 10)
    return {
        "pos": rng.uniform([radius, radius], [h - radius, w - radius]),
        "vel": rng.uniform(-1.5, 1.5, size=2),
        "radius": radius,
        "colour": rng.uniform(0, 1, size=3).astype(np.float32),
        "square": bool(rng.integers(2)),
    }


def demo_videos_root() -> Path:
    """The cached unlabelled demo set, generated on first call."""
    return generate_once(cache_dir() / f"demo_videos-{VERSION}", _write_unlabelled, complete=_complete)


def demo_motion_root() -> Path:
    """The cached labelled motion demo set (``train/<class>/``, ``heldout/<class>/``), generated on first call."""
    return generate_once(cache_dir() / f"demo_motion-{MOTION_VERSION}", _write_motion, complete=_complete)


def resolve_root(root: str) -> Path:
    """``builtin:demo_videos`` / ``builtin:demo_motion`` -> the generated cache folder; anything else is a path."""
    return DEMO_ROOTS[root]() if root in DEMO_ROOTS else Path(root).expanduser()


DEMO_ROOTS: dict[str, Callable[[], Path]] = {
    BUILTIN_DEMO_ROOT: demo_videos_root,
    MOTION_DEMO_ROOT: demo_motion_root,
    AUDIOVISUAL_DEMO_ROOT: demo_audiovisual_root,
}
