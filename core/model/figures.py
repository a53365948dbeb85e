"""Reconstruction figures: which statistics draw the removed patches, and the caption line that says so.

A norm-pix model predicts every patch normalized by its own mean and std; drawing the prediction needs a mean
and a std. The MAE paper's figures and VideoMAE's visualization script take them from each *true* patch, so
a model that predicts almost nothing still draws the right colours in the right places. Such a
figure says so in a caption line; ``raw_stats`` draws the removed patches with the visible patches' average
statistics instead, which shows what the model itself predicts.

:func:`render_figure` is the one front door used by ``anymae visualize`` and the pre-training loop; the
modalities draw the caption with :func:`add_caption` / :func:`caption_strip`, find the removed patches in the
input's layout with :func:`removed_values` and grey them out in the "masked" panel with :func:`grey_out`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.modality import Modality
from anymae.core.model.tokenizer import Tokenizer

__all__ = [
    "RAW_STATS_CAPTION",
    "REMOVED_GREY",
    "TRUE_STATS_CAPTION",
    "add_caption",
    "caption_strip",
    "figure_prediction",
    "grey_out",
    "removed_values",
    "render_figure",
]

TRUE_STATS_CAPTION = "removed patches: prediction de-normalized with each true patch's mean and std"
RAW_STATS_CAPTION = "removed patches: prediction de-normalized with the visible patches' average mean and std"

Pixels = TypeVar("Pixels", Tensor, np.ndarray)
REMOVED_GREY = 128  # the grey of removed patches in the "masked" panel (uint8, every channel)
_LINE_H, _MARGIN = 12, 4


@torch.no_grad()
def figure_prediction(
    model: MaskedAutoencoder, x: Tensor, pred: Tensor, mask: Tensor, *, raw_stats: bool = False
) -> tuple[Tensor, str]:
    """x (N, ...), pred (N, L, P) in target space, mask (N, L) 1 = removed -> (patch values (N, L, P), caption).

    The caption is empty when the way back to patch values does not depend on the patches (a pixel target):
    the figure then shows the prediction as it is. Whether it depends is a property of the model's target
    (any registered one), so it is answered by mapping the removed tokens both ways and comparing.
    """
    true_stats = model.pred_to_pixels(x, pred)
    visible_stats = model.pred_to_pixels(x, pred, mask)
    removed = mask.bool()
    uses_patches = not torch.allclose(true_stats[removed], visible_stats[removed], rtol=1e-4, atol=1e-5)
    if raw_stats:
        return visible_stats, RAW_STATS_CAPTION if uses_patches else ""
    return true_stats, TRUE_STATS_CAPTION if uses_patches else ""


@torch.no_grad()
def render_figure(
    modality: Modality,
    model: MaskedAutoencoder,
    *,
    inputs: Tensor,
    pred: Tensor,
    mask: Tensor,
    data: Any,
    path: str | Path,
    raw_stats: bool = False,
) -> tuple[Path, str]:
    """Draw ``modality``'s reconstruction figure of inputs (N, ...), pred (N, L, P) in target space and mask
    (N, L) at ``path`` -> (the figure, its caption). Tensors may be on any device; the figure is drawn on CPU."""
    pixels, caption = figure_prediction(model, inputs, pred.float(), mask, raw_stats=raw_stats)
    tokenizer = model.tokenizer
    device = next(tokenizer.parameters(), torch.empty(0)).device
    figure = modality.render_reconstruction(
        inputs=inputs.cpu(),
        pred=pixels.cpu(),
        mask=mask.cpu(),
        tokenizer=tokenizer.cpu(),
        data=data,
        path=path,
        caption=caption,
    )
    tokenizer.to(device)
    return Path(figure), caption


def caption_strip(caption: str, width: int) -> np.ndarray:
    """The caption as black text on white, wrapped at word boundaries to ``width`` pixels: (h, width, 3) uint8,
    with h = 0 for an empty caption."""
    if not caption:
        return np.zeros((0, width, 3), dtype=np.uint8)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in caption.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(candidate) <= width - 2 * _MARGIN:
            lines[-1] = candidate
        else:
            lines.append(word)
    strip = Image.new("RGB", (width, len(lines) * _LINE_H + 2 * _MARGIN), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + i * _LINE_H), line, fill="black")
    return np.asarray(strip)


def add_caption(image: Image.Image, caption: str) -> Image.Image:
    """``image`` with the caption in a white strip below it; ``image`` itself for an empty caption."""
    if not caption:
        return image
    strip = caption_strip(caption, image.width)
    out = Image.new("RGB", (image.width, image.height + strip.shape[0]), "white")
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(Image.fromarray(strip), (0, image.height))
    return out


def removed_values(mask: Tensor, *, tokenizer: Tokenizer) -> Tensor:
    """mask (N, L), 1 = removed -> (N, C, ...) in the input's layout (the tokenizer's ``unpatchify``): 1.0 on
    every value of a removed patch, 0.0 elsewhere. Works for any modality: the mask is unpatchified as if
    it were a prediction of constant patches."""
    return tokenizer.unpatchify(mask.float()[..., None].expand(-1, -1, tokenizer.patch_dim))  # (N, C, ...)


def grey_out(pixels: Pixels, removed: Pixels, *, grey: int = REMOVED_GREY) -> Pixels:
    """The "removed patches" panel: ``pixels`` (..., 3) uint8 with every pixel where ``removed`` (...) is True set
    to ``grey`` in all three channels, in place; returns ``pixels``."""
    pixels[removed] = grey
    return pixels
