"""``builtin:demo_segment``: a small labelled segmentation set, generated once, deterministically, at first use.

Each 64x64 image is a random crop of one of the photographs shipped in ``demo_photos/`` (scikit-image's), with
two to four filled shapes drawn on it in random colours and sizes, later shapes over earlier ones; the mask gives
each pixel the class of the shape on top, or of the background: ``background``, ``disc``, ``square``,
``triangle``, ``ring``, ``bar``. Telling the classes apart needs the outline of a shape, not its colour.
Training images sit on crops of the training photos and validation images on crops of the held-out photos, so
no background is shared between the splits. Written in the ADE20K layout (``images/{training,validation}/*.png``,
``annotations/{training,validation}/*.png``) into ``$ANYMAE_CACHE`` (default ``~/.cache/anymae``)/
``demo_segment-v1``; a temporary folder is renamed into place so a half-written set is never used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anymae.core.data.files import cache_dir, generate_once

from .data import demo_photos_root, find_images

__all__ = ["CLASSES", "SEGMENT_DEMO_ROOT", "demo_segment_root", "make_demo_pair"]

SEGMENT_DEMO_ROOT = "builtin:demo_segment"
VERSION = "v1"  # bump when the generator changes, so old caches are not reused
SIZE = 64
CLASSES = ("background", "disc", "square", "triangle", "ring", "bar")
NUM_TRAIN, NUM_VALIDATION = 400, 100
SPLITS = {"training": ("train", 0, NUM_TRAIN), "validation": ("heldout", 100_000, NUM_VALIDATION)}  # photos, seeds


def make_demo_pair(seed: int, photos: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``seed`` of the set: uint8 (64, 64, 3) and its mask uint8 (64, 64) of indices into :data:`CLASSES`."""
    rng = np.random.default_rng(seed)
    with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
        photo = photo.convert("RGB")
        top = int(rng.integers(photo.height - SIZE + 1))
        left = int(rng.integers(photo.width - SIZE + 1))
        image = photo.crop((left, top, left + SIZE, top + SIZE))
    mask = Image.new("L", (SIZE, SIZE), 0)
    paint, label = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, len(CLASSES)))
        r = float(rng.uniform(7, 14))
        cy, cx = rng.uniform(r, SIZE - r, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        angle = float(rng.uniform(0, np.pi))
        for draw, fill in ((paint, colour), (label, cls)):  # the same shape on the image and on the mask
            _draw_shape(draw, CLASSES[cls], cx, cy, r, fill, angle=angle)
    return np.asarray(image), np.asarray(mask)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill, *, angle: float) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "disc":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=fill)
    elif kind == "triangle":
        draw.regular_polygon((cx, cy, r), 3, rotation=np.degrees(angle), fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(r / 3)))
    else:  # bar: a long thin rectangle at an angle
        dx, dy = np.cos(angle) * r, np.sin(angle) * r
        nx, ny = -np.sin(angle) * r / 4, np.cos(angle) * r / 4
        draw.polygon([(cx - dx - nx, cy - dy - ny), (cx + dx - nx, cy + dy - ny),
                      (cx + dx + nx, cy + dy + ny), (cx - dx + nx, cy - dy + ny)], fill=fill)  # fmt: skip


def _complete(root: Path) -> bool:
    return all((root / "annotations" / split).is_dir() for split in SPLITS)


def _write(staging: Path) -> None:
    for split, (photo_split, first_seed, count) in SPLITS.items():
        photos = find_images(demo_photos_root() / photo_split)
        for dest in ("images", "annotations"):
            (staging / dest / split).mkdir(parents=True)
        for seed in range(first_seed, first_seed + count):
            image, mask = make_demo_pair(seed, photos)
            Image.fromarray(image).save(staging / "images" / split / f"{seed:06d}.png")
            Image.fromarray(mask, mode="L").save(staging / "annotations" / split / f"{seed:06d}.png")


def demo_segment_root() -> Path:
    """The cached segmentation demo set (ADE20K layout), generated on first call."""
    return generate_once(cache_dir() / f"demo_segment-{VERSION}", _write, complete=_complete)
