"""Benchmark data: JPEG files written on the fly (the GPU-decoding pipeline is anymae's own ``data.decode: gpu``,
``anymae.modalities.image.device_decode``).

The files stand in for ImageNet photographs (about 500x375, quality 90, smooth content with texture), so
decoding costs what it costs on real data; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "write_jpegs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_jpegs(folder: Path, count: int, *, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
    """``count`` photographs-like JPEGs in ``folder/train/all/`` (an ImageFolder layout); returns the paths."""
    out = folder / "train" / "all"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    gx, gy = np.linspace(0, 1, w)[None, :, None], np.linspace(0, 1, h)[:, None, None]
    paths = []
    for i in range(count):
        base = rng.uniform(0.2, 0.8, size=(1, 1, 3))
        texture = rng.normal(0, 0.06, size=(h, w, 3))
        array = np.clip(0.5 * base + 0.3 * gx + 0.2 * gy + texture, 0, 1)
        image = Image.fromarray((255 * array).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            draw.ellipse((x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))), fill=fill)
        path = out / f"img{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths
