"""The reconstruction figure of the MAE paper (Figure 2): original | masked | reconstruction | pasted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from anymae.core.model.figures import add_caption, grey_out, removed_values
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["reconstruction_images", "save_reconstruction_grid"]

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruction_images(
    inputs: Tensor, pred: Tensor, mask: Tensor, *, tokenizer: Tokenizer
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """inputs (N, C, H, W), pred (N, L, P) in patch values, mask (N, L) -> the four columns, each (N, C, H, W).

    ``pred`` is already mapped back from the target space (e.g. norm-pix) by the core.
    """
    recon = tokenizer.unpatchify(pred.float())  # (N, C, H, W)
    removed = removed_values(mask, tokenizer=tokenizer)  # (N, C, H, W)
    masked = inputs * (1 - removed)
    pasted = inputs * (1 - removed) + recon * removed
    return inputs, masked, recon, pasted


def _to_uint8(x: Tensor, mean: Sequence[float], std: Sequence[float], rgb_bands: Sequence[int] | None = None) -> Tensor:
    """(C, H, W) normalized -> (H, W, 3) uint8, each band de-normalized with its own mean and std.

    Grey and RGB images (``rgb_bands`` None) are drawn as their values in [0, 1]. Otherwise the bands
    ``rgb_bands`` (default: the first three, or the first as grey when there are fewer than three) make an
    R, G, B composite, each band stretched from its mean - 2 std to its mean + 2 std (SatMAE's display range
    for Sentinel-2), since the scaled values of other bands have no colour of their own.
    """
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    img = x.cpu() * s + m  # (C, H, W) in the scaled values of the data
    if rgb_bands is None and img.shape[0] in (1, 3):
        img = img.clamp(0, 1)
    else:
        bands = list(rgb_bands) if rgb_bands is not None else [0, 1, 2] if img.shape[0] >= 3 else [0]
        lo, hi = (m - 2 * s)[bands], (m + 2 * s)[bands]
        img = ((img[bands] - lo) / (hi - lo)).clamp(0, 1)  # (3 or 1, H, W)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.permute(1, 2, 0) * 255).round().to(torch.uint8)


def save_reconstruction_grid(
    columns: Sequence[Tensor],
    removed_fill: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    path: str | Path,
    min_side: int = 192,
    rgb_bands: Sequence[int] | None = None,
    caption: str = "",
) -> Path:
    """Write rows of (original, masked, reconstruction, pasted) as one PNG; removed patches are grey.
    ``rgb_bands``: the bands drawn as R, G, B (or one as grey), see :func:`_to_uint8`. ``caption``: a line
    under the rows saying how the removed patches were drawn (see :mod:`anymae.core.model.figures`)."""
    originals, masked, recon, pasted = columns
    n, _, h, w = originals.shape
    zoom = max(1, -(-min_side // max(h, w)))  # small demo crops are enlarged (nearest) to be visible
    cell_h, cell_w, pad, header = h * zoom, w * zoom, 4, 18
    canvas = Image.new("RGB", (4 * (cell_w + pad) + pad, header + n * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(COLUMNS):
        draw.text((pad + c * (cell_w + pad) + 2, 3), title, fill="black")
    # int(0.5 * 255): the image figures' grey since the first version (tests/test_cli.py checks it)
    grey = 127
    for i in range(n):
        cells = [_to_uint8(col[i], mean, std, rgb_bands) for col in (originals, masked, recon, pasted)]
        hole = removed_fill[i, 0].cpu().bool()  # (H, W)
        grey_out(cells[1], hole, grey=grey)
        for c, cell in enumerate(cells):
            tile = Image.fromarray(cell.numpy()).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (pad + c * (cell_w + pad), header + pad + i * (cell_h + pad)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    add_caption(canvas, caption).save(out)
    return out
