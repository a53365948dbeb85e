"""``builtin:demo_videos``: small synthetic videos generated once, deterministically, at first use.

Each video is a shaded background with broad drifting bands of light and two or three textured objects
(checkered squares, shaded discs) moving at constant velocity and bouncing off the borders: motion and texture
a video MAE can learn to predict, unlike static noise. Written with PyAV (H.264, or MPEG-4 part 2 when
this FFmpeg has no libx264) into ``$ANYMAE_CACHE`` (default ``~/.cache/anymae``)/``demo_videos-v4``,
``train/`` and ``heldout/``; a temporary folder is renamed into place so a half-written set is never used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .decode import write_video

__all__ = ["BUILTIN_DEMO_ROOT", "demo_videos_root", "make_demo_video", "resolve_root"]

BUILTIN_DEMO_ROOT = "builtin:demo_videos"
VERSION = "v4"  # bump when the generator changes, so old caches are not reused
SIZE = (48, 48)  # H, W: larger than the demo's 32x32 crops so that the multi-scale crop has room
FRAMES, FPS = 24, 10
NUM_TRAIN, NUM_HELDOUT = 128, 8  # many short videos: 32 were memorised, not generalised from


def make_demo_video(seed: int, *, size: tuple[int, int] = SIZE, frames: int = FRAMES) -> np.ndarray:
    """uint8 (frames, H, W, 3) video number ``seed``: a shaded background with broad drifting bands of light and
    two or three moving objects (checkered squares, shaded discs) that bounce off the borders."""
    rng = np.random.default_rng(seed)
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    tint = rng.uniform(-0.25, 0.25, size=3).astype(np.float32)
    ramp_angle, stripe_angle = rng.uniform(0, 2 * np.pi, size=2)
    ramp = ((xs * np.cos(ramp_angle) + ys * np.sin(ramp_angle)) / max(h, w))[..., None]
    period = rng.uniform(64, 96)  # wider than the frame: broad moving shading, not fine stripes
    drift = rng.uniform(-2.0, 2.0)
    objects = []
    for _ in range(int(rng.integers(2, 4))):
        radius = rng.uniform(6, 10)
        objects.append(
            {
                "pos": rng.uniform([radius, radius], [h - radius, w - radius]),
                "vel": rng.uniform(-1.5, 1.5, size=2),
                "radius": radius,
                "colour": rng.uniform(0, 1, size=3).astype(np.float32),
                "square": bool(rng.integers(2)),
            }
        )
    video = np.empty((frames, h, w, 3), dtype=np.uint8)
    for f in range(frames):
        phase = (xs * np.cos(stripe_angle) + ys * np.sin(stripe_angle) + drift * f) * (2 * np.pi / period)
        image = base + tint * ramp + 0.2 * np.sin(phase)[..., None]
        for obj in objects:
            (cy, cx), r = obj["pos"], obj["radius"]
            if obj["square"]:
                inside = (np.abs(ys - cy) < r) & (np.abs(xs - cx) < r)
                checker = (np.floor((ys - cy + r) / 4) + np.floor((xs - cx + r) / 4)) % 2
                shaded = obj["colour"] * (0.65 + 0.35 * checker[..., None])
            else:
                dist2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / r**2
                inside = dist2 < 1
                shaded = obj["colour"] * (1.0 - 0.6 * dist2[..., None])
            image = np.where(inside[..., None], shaded, image)
            obj["pos"] = obj["pos"] + obj["vel"]
            for axis, limit in enumerate((h, w)):  # bounce off the borders
                if not r <= obj["pos"][axis] <= limit - r:
                    obj["vel"][axis] *= -1
                    obj["pos"][axis] = np.clip(obj["pos"][axis], r, limit - r)
        video[f] = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return video


def demo_videos_root() -> Path:
    """The cached demo set, generated on first call."""
    cache = Path(os.environ.get("ANYMAE_CACHE", Path.home() / ".cache" / "anymae")).expanduser()
    root = cache / f"demo_videos-{VERSION}"
    if (root / "train").is_dir() and (root / "heldout").is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo_videos-", dir=cache))
    try:
        for i in range(NUM_TRAIN + NUM_HELDOUT):
            split = "train" if i < NUM_TRAIN else "heldout"
            write_video(staging / split / f"demo{i:03d}.mp4", make_demo_video(i), fps=FPS)
        try:
            staging.rename(root)
        except OSError:  # another process finished first: use its copy
            if not (root / "train").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def resolve_root(root: str) -> Path:
    """``builtin:demo_videos`` -> the generated cache folder; anything else is a filesystem path."""
    return demo_videos_root() if root == BUILTIN_DEMO_ROOT else Path(root).expanduser()
