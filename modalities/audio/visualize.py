"""Reconstruction figure for spectrograms: per clip, rows original / masked / reconstruction /
reconstruction with the visible patches pasted back (the MAE paper's Figure 2, one row per panel), with axes.

Drawn with PIL (no plotting library): time runs left to right in seconds (10 ms per frame), mel bins bottom
to top; the rows of one clip share one colour scale (the range of its visible values, so that a figure drawn
from the visible patches alone never depends on the removed ones), removed patches are grey.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from anymae.core.model.figures import add_caption, grey_out, removed_values
from anymae.core.model.tokenizer import Tokenizer

from .features import FRAME_SHIFT_MS

__all__ = ["colorize", "save_spectrogram_figure"]

ROWS = ("original", "masked", "reconstruction", "reconstruction + visible")
# A perceptually ordered dark-blue -> green -> yellow ramp (anchor colours of viridis).
_RAMP = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32)


def colorize(values: Tensor, low: float, high: float) -> Tensor:
    """(H, W) floats -> (H, W, 3) uint8 through the colour ramp, ``low``..``high`` mapped to its ends."""
    u = ((values.float() - low) / max(high - low, 1e-6)).clamp(0, 1) * (len(_RAMP) - 1)
    i = u.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (u - i)[..., None]
    return (_RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac).round().to(torch.uint8)


def _tick_step(total: float, target: int = 8) -> float:
    """A 1/2/5 x 10^k step giving at most about ``target`` ticks over ``total``."""
    raw = total / target
    base = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


@torch.no_grad()
def save_spectrogram_figure(
    inputs: Tensor, pred: Tensor, mask: Tensor, *, tokenizer: Tokenizer, path: str | Path, caption: str = ""
) -> Path:
    """inputs (N, 1, T, F), pred (N, L, P) in patch values, mask (N, L) 1 = removed -> a PNG at ``path``, with
    the ``caption`` line (how the removed patches were drawn, see :mod:`anymae.core.model.figures`) at the bottom."""
    recon = tokenizer.unpatchify(pred.float().cpu())  # (N, 1, T, F)
    removed = removed_values(mask.cpu(), tokenizer=tokenizer)  # (N, 1, T, F)
    inputs = inputs.float().cpu()
    n, _, frames, bins = inputs.shape
    sx = max(1, math.ceil(768 / frames))  # short clips are stretched to stay readable
    sy = max(1, math.ceil(128 / bins))
    panel_w, panel_h = frames * sx, bins * sy
    left, top, gap, label_h, axis_h = 52, 6, 6, 14, 34
    row_h = label_h + panel_h + gap
    clip_h = len(ROWS) * row_h + axis_h
    canvas = Image.new("RGB", (left + panel_w + 12, top + n * clip_h), "white")
    draw = ImageDraw.Draw(canvas)
    seconds = frames * FRAME_SHIFT_MS / 1000
    t_step = _tick_step(seconds)
    f_step = _tick_step(bins, target=4)
    for k in range(n):
        hole = removed[k, 0].bool()
        visible = inputs[k, 0][~hole]
        low, high = visible.min().item(), visible.max().item()
        pasted = torch.where(hole, recon[k, 0], inputs[k, 0])
        panels = (inputs[k, 0], inputs[k, 0].masked_fill(hole, float("nan")), recon[k, 0], pasted)
        y0 = top + k * clip_h
        for r, (title, values) in enumerate(zip(ROWS, panels, strict=True)):
            rgb = colorize(torch.nan_to_num(values, nan=low), low, high)  # (T, F, 3)
            if r == 1:
                grey_out(rgb, hole)
            # (T, F) -> image (F rows from high bin at the top, T columns)
            image = Image.fromarray(rgb.permute(1, 0, 2).flip(0).contiguous().numpy())
            image = image.resize((panel_w, panel_h), Image.NEAREST)
            py = y0 + r * row_h + label_h
            draw.text((left, py - label_h + 1), title, fill="black")
            canvas.paste(image, (left, py))
            for b in range(0, bins, int(f_step)):  # mel-bin ticks on the left
                yy = py + panel_h - 1 - b * sy
                draw.line([(left - 4, yy), (left - 1, yy)], fill="black")
                draw.text((4, yy - 6), str(b), fill="black")
        axis_y = y0 + len(ROWS) * row_h
        draw.line([(left, axis_y - gap + 1), (left + panel_w, axis_y - gap + 1)], fill="black")
        steps = int(seconds / t_step + 1e-9)
        for s in range(steps + 1):
            xx = left + round(s * t_step * 1000 / FRAME_SHIFT_MS * sx)
            draw.line([(xx, axis_y - gap + 1), (xx, axis_y - gap + 4)], fill="black")
            draw.text((xx - 6, axis_y - gap + 5), f"{s * t_step:g}", fill="black")
        draw.text((left + panel_w // 2 - 20, axis_y - gap + 17), "time (s)", fill="black")
        draw.text((2, y0), "mel bin", fill="black")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    add_caption(canvas, caption).save(out)
    return out
