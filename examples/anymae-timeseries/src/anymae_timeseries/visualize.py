"""The reconstruction figure: per sample and channel, the series, its removed spans and their reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from anymae.core.model.figures import add_caption, grey_out

from .tokenizer import PatchTokenizer1d

__all__ = ["reconstruct", "save_reconstruction_plot"]

PANEL_H, PAD, HEADER = 64, 6, 18
SPAN_GREY = 205  # removed spans: light enough for the black series line to stay readable on top


@torch.no_grad()
def reconstruct(pred: Tensor, *, tokenizer: PatchTokenizer1d) -> Tensor:
    """pred (N, L, P) in patch values (the core maps norm-pix predictions back) -> (N, C, T) in input units."""
    return tokenizer.unpatchify(pred.float())  # (N, C, T)


def save_reconstruction_plot(
    inputs: Tensor,
    recon: Tensor,
    removed: Tensor,
    *,
    patch_size: int,
    path: str | Path,
    width: int = 512,
    caption: str = "",
) -> Path:
    """inputs, recon (N, C, T), removed (N, C, T) with 1 on removed steps (``anymae.core.model.figures.removed_values``)
    -> a PNG of N*C panels, removed spans grey, the ``caption`` line (how the removed spans were drawn) at the
    bottom."""
    n, c, t = inputs.shape
    step = max(1, width // t)  # pixels per time step
    canvas = Image.new("RGB", (t * step + 2 * PAD, HEADER + n * c * (PANEL_H + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 3), "black: original   grey: removed spans   red: reconstruction", fill="black")
    for i in range(n):
        for ch in range(c):
            top = HEADER + (i * c + ch) * (PANEL_H + PAD)
            orig, rec = inputs[i, ch].float(), recon[i, ch].float()
            lo, hi = float(orig.min()), float(orig.max())
            scale = (PANEL_H - 4) / max(hi - lo, 1e-6)

            def y(v: float, top: int = top, lo: float = lo, scale: float = scale) -> float:
                return top + PANEL_H - 2 - (min(max(v, lo), lo + (PANEL_H - 4) / scale) - lo) * scale

            draw.rectangle((PAD, top, PAD + t * step - 1, top + PANEL_H - 1), outline=(220, 220, 220))
            hole = removed[i, ch].bool()  # (T,)
            box = (PAD, top + 1, PAD + t * step, top + PANEL_H - 1)
            panel = np.array(canvas.crop(box))  # (PANEL_H - 2, T * step, 3)
            columns = np.broadcast_to(hole.repeat_interleave(step).numpy(), panel.shape[:2])  # (PANEL_H - 2, T * step)
            canvas.paste(Image.fromarray(grey_out(panel, columns, grey=SPAN_GREY)), box)
            draw.line([(PAD + s * step, y(float(orig[s]))) for s in range(t)], fill="black", width=1)
            spans = [k for k in range(t // patch_size) if hole[k * patch_size]]
            for k in spans:  # the loss only scores removed patches, so only those are drawn
                span = range(k * patch_size, (k + 1) * patch_size)
                draw.line([(PAD + s * step, y(float(rec[s]))) for s in span], fill=(220, 30, 30), width=2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    add_caption(canvas, caption).save(out)
    return out
