"""Video reconstruction figures: a PNG grid (rows original / masked / reconstruction, columns = frames) and
an animated GIF of the same rows side by side, encoded with PyAV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from anymae.core.model.figures import add_caption, caption_strip, grey_out, removed_values
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["reconstruction_clips", "reconstruction_rows", "save_reconstruction_grid", "save_reconstruction_movie"]

ROWS = ("original", "masked", "reconstruction")


@torch.no_grad()
def reconstruction_clips(
    inputs: Tensor, pred: Tensor, mask: Tensor, *, tokenizer: Tokenizer
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """inputs (N, C, T, H, W), pred (N, L, P) in patch values, mask (N, L) 1 = removed ->
    (original, masked, reconstruction, removed) each (N, C, T, H, W); ``removed`` is 1 on removed pixels."""
    inputs = tokenizer.fold(inputs)
    recon = tokenizer.unpatchify(pred.float())
    removed = removed_values(mask, tokenizer=tokenizer)
    return inputs, inputs * (1 - removed), recon, removed


def _to_uint8(clip: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, T, H, W) normalized -> (T, H, W, 3) uint8."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    video = (clip.float().cpu() * s + m).clamp(0, 1)
    if video.shape[0] != 3:
        video = video[:1].expand(3, -1, -1, -1)
    return (video.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()


def reconstruction_rows(
    inputs: Tensor, pred: Tensor, mask: Tensor, *, tokenizer: Tokenizer, mean: Sequence[float], std: Sequence[float]
) -> list[list[np.ndarray]]:
    """inputs (N, C, T, H, W), pred (N, L, P) in patch values, mask (N, L) 1 = removed -> per sample
    [original, masked (removed = grey), reconstruction], each (T, H, W, 3) uint8: what the figures draw."""
    originals, masked, recon, removed = reconstruction_clips(inputs, pred, mask, tokenizer=tokenizer)
    out = []
    for i in range(originals.shape[0]):
        hole = removed[i, 0].bool().numpy()  # (T, H, W)
        greyed = grey_out(_to_uint8(masked[i], mean, std), hole)
        out.append([_to_uint8(originals[i], mean, std), greyed, _to_uint8(recon[i], mean, std)])
    return out


def save_reconstruction_grid(
    samples: list[list[np.ndarray]], *, path: str | Path, min_side: int = 64, caption: str = ""
) -> Path:
    """One PNG of :func:`reconstruction_rows`: for every sample three rows (original, masked, reconstruction),
    one column per frame; a ``caption`` line (how the removed patches were drawn, see
    :mod:`anymae.core.model.figures`) under the rows."""
    rows = [row for sample in samples for row in sample]
    t, h, w, _ = rows[0].shape
    zoom = max(1, -(-min_side // max(h, w)))
    cell_h, cell_w, pad, label = h * zoom, w * zoom, 2, 96
    canvas = Image.new("RGB", (label + t * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, video in enumerate(rows):
        y = pad + r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 5), ROWS[r % 3], fill="black")
        for f in range(t):
            tile = Image.fromarray(video[f]).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label + pad + f * (cell_w + pad), y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    add_caption(canvas, caption).save(out)
    return out


def save_reconstruction_movie(
    samples: list[list[np.ndarray]], *, path: str | Path, fps: float = 4, min_side: int = 96, caption: str = ""
) -> Path:
    """An animated GIF (``.gif``) or an H.264 MP4 (``.mp4``), by ``path``'s suffix, of :func:`reconstruction_rows`:
    each frame shows original | masked | reconstruction, one sample per line, and the ``caption`` under them."""
    lines = [np.concatenate(sample, axis=2) for sample in samples]  # (T, H, 3W, 3) per sample
    movie = np.concatenate(lines, axis=1)  # (T, N*H, 3W, 3)
    zoom = max(1, -(-min_side // max(movie.shape[1:3])))
    movie = movie.repeat(zoom, axis=1).repeat(zoom, axis=2)
    strip = caption_strip(caption, movie.shape[2])  # (h, W, 3), h = 0 without a caption
    movie = np.concatenate([movie, np.broadcast_to(strip, (movie.shape[0], *strip.shape))], axis=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".mp4":
        _write_mp4(movie, out, fps)
        return out
    with av.open(str(out), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = movie.shape[2], movie.shape[1], "rgb8"
        for image in movie:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="rgb8")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def _write_mp4(movie: np.ndarray, out: Path, fps: float) -> None:
    """uint8 frames (T, H, W, 3) -> H.264 in yuv420p (sides padded to even sizes, as the format needs)."""
    h, w = movie.shape[1:3]
    movie = np.pad(movie, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = movie.shape[2], movie.shape[1], "yuv420p"
        stream.options = {"crf": "18"}  # near-lossless: the masked patches stay sharp
        for image in movie:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
