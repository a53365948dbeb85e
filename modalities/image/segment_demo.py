"""``builtin:demo_segment``: a small labelled segmentation set, generated once, deterministically, at first use.

Each 64x64 image is a random crop of one of the photographs shipped in ``demo_photos/`` (scikit-image's), with
two to four filled shapes drawn on it in random colours and sizes, later shapes over earlier ones; the mask gives
each pixel the class of the shape on top, or of the background: ``background``, ``disc``, ``square``,
``triangle``, ``ring``, ``bar``. Telling the classes apart needs the outline of a shape, not its colour.
Training images sit on crops of the training photos and validation images on crops of the held-out photos, so
no background is shared between the splits. Written in the ADE20K layout (``images/{training,validation}/*.png``,
``annotations/{training,validation}/*.png``) into ``$ANYMAE_CACHE`` (default ``~/.cache/anymae``)/
``demo_segment-v1``; a temporary folder is renamed into place so a half-written set is never used.

Two options for transfer studies, through :func:`write_demo_segment` (``benchmarks/transfer_study.py`` uses them):

- ``variant="textures"``: random discs, squares and triangles, each filled with one of five patterns in two random
  colours and the class is the pattern, whatever the outline: ``background``, ``stripes``, ``checks``, ``dots``,
  ``speckle``, ``plain`` (:data:`TEXTURE_CLASSES`). Telling these apart needs appearance, not outline.
- ``num_unlabelled=N``: also ``images/unlabelled/``, N more images of the variant drawn on the training photos
  (seeds from 200,000, disjoint from both labelled splits) and no masks: a pool for pre-training without labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anymae.core.data.files import cache_dir, generate_once

from .data import demo_photos_root, find_images

__all__ = [
    "CLASSES",
    "SEGMENT_DEMO_ROOT",
    "TEXTURE_CLASSES",
    "VARIANTS",
    "demo_segment_root",
    "make_demo_pair",
    "write_demo_segment",
]

SEGMENT_DEMO_ROOT = "builtin:demo_segment"
VERSION = "v1"  # bump when the generator changes, so old caches are not reused
SIZE = 64
CLASSES = ("background", "disc", "square", "triangle", "ring", "bar")
TEXTURE_CLASSES = ("background", "stripes", "checks", "dots", "speckle", "plain")
TEXTURE_OUTLINES = ("disc", "square", "triangle")  # filled outlines: a ring or a bar is too thin to show a pattern
VARIANTS = {"shapes": CLASSES, "textures": TEXTURE_CLASSES}  # variant -> its classes, index = mask value
NUM_TRAIN, NUM_VALIDATION = 400, 100
SPLITS = {"training": ("train", 0, NUM_TRAIN), "validation": ("heldout", 100_000, NUM_VALIDATION)}  # photos, seeds
UNLABELLED_SEED = 200_000  # first seed of the unlabelled pool (training photos)


def make_demo_pair(seed: int, photos: list[Path], *, variant: str = "shapes") -> tuple[np.ndarray, np.ndarray]:
    """Image ``seed`` of the set: uint8 (64, 64, 3) and its mask uint8 (64, 64) of indices into the variant's
    classes (:data:`CLASSES` for ``shapes``, :data:`TEXTURE_CLASSES` for ``textures``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; known: {sorted(VARIANTS)}")
    if variant == "textures":
        return _make_texture_pair(seed, photos)
    rng = np.random.default_rng(seed)
    image = _photo_crop(rng, photos)
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


def _photo_crop(rng: np.random.Generator, photos: list[Path]) -> Image.Image:
    with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
        photo = photo.convert("RGB")
        top = int(rng.integers(photo.height - SIZE + 1))
        left = int(rng.integers(photo.width - SIZE + 1))
        return photo.crop((left, top, left + SIZE, top + SIZE))


def _texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A bool (64, 64) pattern, True where the first of the object's two colours goes; period 4-8 px, any angle."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    angle, period = float(rng.uniform(0, np.pi)), float(rng.uniform(4, 8))
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)  # rotated coordinates
    if kind == "stripes":
        return np.sin(2 * np.pi * u / period) > 0
    if kind == "checks":
        return (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 0
    if kind == "dots":  # discs of radius period/4 on a square lattice of pitch period
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return du**2 + dv**2 < (period / 4) ** 2 * 2
    if kind == "speckle":  # independent 2x2-pixel cells, half of each colour
        cells = rng.random((SIZE // 2, SIZE // 2)) < 0.5
        return np.kron(cells, np.ones((2, 2), dtype=bool))
    return np.ones((SIZE, SIZE), dtype=bool)  # plain


def _make_texture_pair(seed: int, photos: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.array(_photo_crop(rng, photos))
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, len(TEXTURE_CLASSES)))
        outline = TEXTURE_OUTLINES[int(rng.integers(len(TEXTURE_OUTLINES)))]
        r = float(rng.uniform(9, 16))  # a little larger than the shapes variant's 7-14: a few periods across
        cy, cx = rng.uniform(r, SIZE - r, size=2)
        angle = float(rng.uniform(0, np.pi))
        region = Image.new("L", (SIZE, SIZE), 0)
        _draw_shape(ImageDraw.Draw(region), outline, cx, cy, r, 255, angle=angle)
        inside = np.asarray(region) > 0
        first, second = rng.integers(0, 256, size=(2, 3))
        pattern = _texture(TEXTURE_CLASSES[cls], rng)
        image[inside] = np.where(pattern[inside, None], first, second).astype(np.uint8)
        mask[inside] = cls
    return image, mask


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


def write_demo_segment(
    root: Path,
    *,
    variant: str = "shapes",
    num_train: int = NUM_TRAIN,
    num_validation: int = NUM_VALIDATION,
    num_unlabelled: int = 0,
) -> Path:
    """Write a demo set of ``variant`` into ``root`` (ADE20K layout): ``num_train`` training and ``num_validation``
    validation pairs, and ``num_unlabelled`` images without masks under ``images/unlabelled/``. The same
    arguments write the same files; the default arguments write the files of ``builtin:demo_segment``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; known: {sorted(VARIANTS)}")
    counts = {"training": num_train, "validation": num_validation}
    for split, (photo_split, first_seed, _) in SPLITS.items():
        photos = find_images(demo_photos_root() / photo_split)
        for dest in ("images", "annotations"):
            (root / dest / split).mkdir(parents=True, exist_ok=True)
        for seed in range(first_seed, first_seed + counts[split]):
            image, mask = make_demo_pair(seed, photos, variant=variant)
            Image.fromarray(image).save(root / "images" / split / f"{seed:06d}.png")
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{seed:06d}.png")
    if num_unlabelled:
        photos = find_images(demo_photos_root() / "train")
        (root / "images" / "unlabelled").mkdir(parents=True, exist_ok=True)
        for seed in range(UNLABELLED_SEED, UNLABELLED_SEED + num_unlabelled):
            image, _ = make_demo_pair(seed, photos, variant=variant)
            Image.fromarray(image).save(root / "images" / "unlabelled" / f"{seed:06d}.png")
    return root


def _write(staging: Path) -> None:
    write_demo_segment(staging)


def demo_segment_root() -> Path:
    """The cached segmentation demo set (ADE20K layout), generated on first call."""
    return generate_once(cache_dir() / f"demo_segment-{VERSION}", _write, complete=_complete)
