"""The held-out figure of ``anymae segment``: one row per image, columns image / truth / prediction, classes in a
fixed palette so that figures of different runs and epochs compare at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

__all__ = ["palette", "save_segmentation_figure"]

IGNORED = (255, 255, 255)  # pixels of ignore_index: white


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: PASCAL VOC's colour map (the bits of the index spread over R, G, B), starting at its
    entry 1 so that no class is black."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        index, rgb = k + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((index >> channel) & 1) << shift
            index >>= 3
        colours[k] = rgb
    return colours


def _colourise(labels: Tensor, colours: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8."""
    array = labels.cpu().numpy()
    out = np.empty((*array.shape, 3), dtype=np.uint8)
    out[:] = IGNORED
    known = (array >= 0) & (array < len(colours)) & (array != ignore_index)
    out[known] = colours[array[known]]
    return out


def _show(image: Tensor) -> np.ndarray:
    """(C, H, W) normalised input -> (H, W, 3) uint8: the first three bands (or the first, grey), each stretched to
    its own 1st-99th percentile (the input's normalisation is the data's, which the core does not know)."""
    bands = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    array = bands.float().cpu().numpy()
    lo = np.percentile(array, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(array, 99, axis=(1, 2), keepdims=True)
    scaled = np.clip((array - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (scaled.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def save_segmentation_figure(
    rows: list[tuple[Tensor, Tensor, Tensor]], *, num_classes: int, ignore_index: int, path: Path, gap: int = 2
) -> Path:
    """``rows`` of (image (C, H, W), truth (H, W), prediction (H, W)) -> a PNG grid at ``path``: one row each,
    columns image / truth / prediction; images of different sizes are placed at the top left of their cell."""
    colours = palette(num_classes)
    cells = [(_show(image), _colourise(truth, colours, ignore_index), _colourise(pred, colours, ignore_index))
             for image, truth, pred in rows]  # fmt: skip
    height = max(cell[0].shape[0] for cell in cells)
    width = max(cell[0].shape[1] for cell in cells)
    grid = np.full((len(cells) * (height + gap) - gap, 3 * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            grid[top : top + cell.shape[0], left : left + cell.shape[1]] = cell
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
