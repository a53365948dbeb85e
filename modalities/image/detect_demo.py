"""``builtin:demo_detect``: a small COCO-format detection set, generated once, deterministically, at first use.

Each 96x96 image is a random crop of one of the photographs shipped in ``demo_photos/`` (scikit-image's) with one to
four filled shapes in random colours, sizes and angles: ``disc``, ``square``, ``triangle``, ``bar`` (4 categories).
Shapes never overlap (each sits in its own circle), so every polygon is exactly the visible object; the polygon
drawn on the image is the one written as the mask, and the box is its extent. One image in 25 has no shape (a
negative). Telling the categories apart needs the outline of a shape, not its colour. Training images sit on crops
of the training photos and held-out images on crops of the held-out photos, so no background is shared. Written as
``images/{train,heldout}/*.png`` and ``annotations/{train,heldout}.json`` (COCO instances) into ``$ANYMAE_CACHE``
(default ``~/.cache/anymae``)/``demo_detect-v1``; a temporary folder is renamed into place so a half-written set is
never used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from anymae.core.data.files import cache_dir, generate_once

from .data import demo_photos_root, find_images

__all__ = ["CATEGORIES", "DETECT_DEMO_ROOT", "demo_detect_root", "make_demo_image"]

DETECT_DEMO_ROOT = "builtin:demo_detect"
VERSION = "v1"  # bump when the generator changes, so old caches are not reused
SIZE = 96
CATEGORIES = ("disc", "square", "triangle", "bar")  # COCO category ids 1..4
NUM_TRAIN, NUM_HELDOUT = 300, 100
NEGATIVE_EVERY = 25
SPLITS = {"train": (0, NUM_TRAIN), "heldout": (100_000, NUM_HELDOUT)}  # photo split and first seed, count
DISC_VERTICES = 32


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The shape's polygon (x, y) vertices inside the circle of radius ``r`` around (cx, cy)."""
    if kind == "disc":
        turns = [2 * math.pi * k / DISC_VERTICES for k in range(DISC_VERTICES)]
        return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in turns]
    if kind in ("square", "triangle"):
        corners = 4 if kind == "square" else 3
        turns = [angle + 2 * math.pi * k / corners for k in range(corners)]
        return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in turns]
    dx, dy = math.cos(angle) * r, math.sin(angle) * r  # bar: a long thin rectangle at an angle
    nx, ny = -math.sin(angle) * r / 4, math.cos(angle) * r / 4
    return [(cx - dx - nx, cy - dy - ny), (cx + dx - nx, cy + dy - ny), (cx + dx + nx, cy + dy + ny),
            (cx - dx + nx, cy - dy + ny)]  # fmt: skip


def make_demo_image(seed: int, photos: list[Path]) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """Image ``seed`` of the set: uint8 (96, 96, 3) and its objects as (category id, flat polygon x0 y0 x1 y1 ...)."""
    rng = np.random.default_rng(seed)
    with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
        photo = photo.convert("RGB")
        top = int(rng.integers(photo.height - SIZE + 1))
        left = int(rng.integers(photo.width - SIZE + 1))
        image = photo.crop((left, top, left + SIZE, top + SIZE))
    paint = ImageDraw.Draw(image)
    wanted = 0 if seed % NEGATIVE_EVERY == NEGATIVE_EVERY - 1 else int(rng.integers(1, 5))
    placed: list[tuple[float, float, float]] = []
    objects: list[tuple[int, list[float]]] = []
    for _ in range(50 * wanted):  # rejection sampling of non-overlapping circles
        if len(objects) == wanted:
            break
        r = float(rng.uniform(9, 20))
        cx, cy = (float(v) for v in rng.uniform(r + 1, SIZE - r - 1, size=2))
        if any(math.hypot(cx - x, cy - y) < r + q + 2 for x, y, q in placed):
            continue
        category = int(rng.integers(len(CATEGORIES)))
        points = _outline(CATEGORIES[category], cx, cy, r, float(rng.uniform(0, math.pi)))
        paint.polygon(points, fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
        placed.append((cx, cy, r))
        objects.append((category + 1, [round(v, 2) for point in points for v in point]))
    return np.asarray(image), objects


def _annotation(ann_id: int, image_id: int, category: int, polygon: list[float]) -> dict[str, Any]:
    xs, ys = polygon[0::2], polygon[1::2]
    x0, y0 = min(xs), min(ys)
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))  # shoelace
    return {
        "id": ann_id, "image_id": image_id, "category_id": category, "segmentation": [polygon],
        "bbox": [x0, y0, max(xs) - x0, max(ys) - y0], "area": area, "iscrowd": 0,
    }  # fmt: skip


def _complete(root: Path) -> bool:
    return all((root / "annotations" / f"{split}.json").is_file() for split in SPLITS)


def _write(staging: Path) -> None:
    categories = [{"id": i, "name": name} for i, name in enumerate(CATEGORIES, start=1)]
    (staging / "annotations").mkdir(parents=True)
    for split, (first_seed, count) in SPLITS.items():
        photos = find_images(demo_photos_root() / split)
        (staging / "images" / split).mkdir(parents=True)
        images, annotations = [], []
        for seed in range(first_seed, first_seed + count):
            pixels, objects = make_demo_image(seed, photos)
            name = f"{seed:06d}.png"
            Image.fromarray(pixels).save(staging / "images" / split / name)
            images.append({"id": seed, "file_name": name, "height": SIZE, "width": SIZE})
            for category, polygon in objects:
                annotations.append(_annotation(len(annotations) + 1, seed, category, polygon))
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (staging / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def demo_detect_root() -> Path:
    """The cached detection demo set, generated on first call: ``data.train_images: images/train``,
    ``data.train_annotations: annotations/train.json``, ``heldout`` likewise."""
    return generate_once(cache_dir() / f"demo_detect-{VERSION}", _write, complete=_complete)
