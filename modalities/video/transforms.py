"""Clip transforms applied identically to every frame: VideoMAE's multi-scale crop, flip, normalization.

Clips arrive as uint8 (T, H, W, 3) arrays from :mod:`.decode` and leave as float (C, T, H, W) tensors. Crops,
resizes and flips work on the uint8 frames, as VideoMAE's PIL pipeline does (a (T, 3, H, W) view of the decoded
array is already channels-last, the layout of PyTorch's fast uint8 resize: about 8x the float resize on one
core); the clip becomes float once, in :func:`normalize_clip`. Against resizing in float, a value differs by at
most 1/255 before normalization (the uint8 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "crop_starts",
    "eval_clip",
    "multi_crop_views",
    "multiscale_crop_box",
    "normalize_clip",
    "pretrain_clip",
    "resize_clip",
    "to_uint8_clip",
]


def multiscale_crop_box(
    image_hw: tuple[int, int],
    out_hw: tuple[int, int],
    *,
    scales: Sequence[float],
    max_distort: int,
    fix_crop: bool,
    more_fix_crop: bool,
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """VideoMAE's ``GroupMultiScaleCrop._sample_crop_size`` -> (top, left, height, width).

    Crop sides are ``int(min(H, W) * scale)``, snapped to the output side when within 3 pixels; a (w, h)
    pair is drawn among scales at most ``max_distort`` apart; with ``fix_crop`` the offset is one of the 5
    (or, with ``more_fix_crop``, 13) fixed positions on a quarter grid, else uniform.
    """
    image_h, image_w = image_hw
    out_h, out_w = out_hw
    base = min(image_h, image_w)
    sides = [int(base * s) for s in scales]
    crop_hs = [out_h if abs(x - out_h) < 3 else x for x in sides]
    crop_ws = [out_w if abs(x - out_w) < 3 else x for x in sides]
    pairs = [(w, h) for i, h in enumerate(crop_hs) for j, w in enumerate(crop_ws) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    crop_w, crop_h = min(crop_w, image_w), min(crop_h, image_h)  # snapping can exceed a frame barely larger
    if not fix_crop:
        return int(rng.integers(image_h - crop_h + 1)), int(rng.integers(image_w - crop_w + 1)), crop_h, crop_w
    w_step, h_step = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]  # (x, y) in quarter steps: corners and centre
    if more_fix_crop:
        offsets += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    x, y = offsets[int(rng.integers(len(offsets)))]
    return y * h_step, x * w_step, crop_h, crop_w


def resize_clip(clip: Tensor, size: tuple[int, int]) -> Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, h, w) uint8, bilinear with antialiasing (VideoMAE resizes with PIL BILINEAR);
    channels-last, the layout of PyTorch's fast uint8 kernel."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    clip = clip.contiguous(memory_format=torch.channels_last)
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def normalize_clip(clip: Tensor, mean: Sequence[float], std: Sequence[float], *, in_chans: int = 3) -> Tensor:
    """(T, 3, H, W) uint8 RGB in [0, 255] -> (C, T, H, W) float normalized per channel; ``in_chans=1`` makes it
    ITU-R 601 luma (PIL's "L").

    The clip becomes float once, copied straight into a new (C, T, H, W) tensor, and is scaled in place (on one
    core, a copy into an empty tensor takes a quarter of ``.to(float32, memory_format=...)``'s time).
    """
    t, c, h, w = clip.shape
    x = torch.empty((c, t, h, w), dtype=torch.float32)
    x.copy_(clip.transpose(0, 1))  # (3, T, H, W), 0-255
    if in_chans == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0, keepdim=True)  # (1, T, H, W)
    m, s = torch.tensor(mean).view(-1, 1, 1, 1), torch.tensor(std).view(-1, 1, 1, 1)
    return x.mul_(1.0 / (255.0 * s)).sub_(m / s)


def to_uint8_clip(frames: np.ndarray) -> Tensor:
    """uint8 (T, H, W, 3) -> a (T, 3, H, W) uint8 view of the same memory (channels-last), no copy."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def pretrain_clip(
    frames: np.ndarray,
    size: tuple[int, int],
    *,
    scales: Sequence[float],
    max_distort: int,
    fix_crop: bool,
    more_fix_crop: bool,
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    rng: np.random.Generator,
) -> Tensor:
    """VideoMAE's pre-training augmentation: one multi-scale crop for the whole clip, resized to ``size``,
    an optional horizontal flip of the whole clip, normalization -> (C, T, h, w)."""
    top, left, h, w = multiscale_crop_box(
        frames.shape[1:3],
        size,
        scales=scales,
        max_distort=max_distort,
        fix_crop=fix_crop,
        more_fix_crop=more_fix_crop,
        rng=rng,
    )
    clip = resize_clip(to_uint8_clip(frames[:, top : top + h, left : left + w]), size)  # (T, 3, h, w) uint8
    if hflip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return normalize_clip(clip, mean, std, in_chans=in_chans)


def eval_clip(
    frames: np.ndarray, size: tuple[int, int], *, mean: Sequence[float], std: Sequence[float], in_chans: int
) -> Tensor:
    """VideoMAE's evaluation view: shorter side resized to the crop's longer side, centre crop -> (C, T, h, w)."""
    clip = to_uint8_clip(frames)  # (T, 3, H, W) uint8
    h, w = clip.shape[-2:]
    short = max(size)
    scale = short / min(h, w)
    clip = resize_clip(clip, (max(round(h * scale), size[0]), max(round(w * scale), size[1])))
    top, left = (clip.shape[-2] - size[0]) // 2, (clip.shape[-1] - size[1]) // 2
    return normalize_clip(clip[..., top : top + size[0], left : left + size[1]], mean, std, in_chans=in_chans)


def crop_starts(length: int, crop: int, num_crops: int) -> list[int]:
    """Offsets of ``num_crops`` crops of ``crop`` pixels along a side of ``length``: VideoMAE's test crops
    ``int(k * (length - crop) / (num_crops - 1))`` (first, ..., last), or the centre ``int(round((length - crop)
    / 2))`` (its ``CenterCrop``) for one crop."""
    room = length - crop
    if num_crops == 1:
        return [round(room / 2)]  # python's round, as VideoMAE's int(round(...))
    return [int(k * room / (num_crops - 1)) for k in range(num_crops)]


def multi_crop_views(
    frames: np.ndarray,
    size: tuple[int, int],
    *,
    short_side: int,
    num_crops: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
) -> Tensor:
    """VideoMAE's test views of one clip: uint8 (T, H, W, 3) -> (num_crops, C, T, h, w).

    The shorter side is resized to ``short_side`` (bilinear, the longer one to ``int(long * short_side /
    short)`` as its ``Resize`` does), then ``num_crops`` crops of ``size`` are taken spread along the longer
    side (rows when H >= W) and centred on the other. VideoMAE's 3 crops of 224 from a 224 short side are the
    left, centre and right squares of a landscape video.
    """
    clip = to_uint8_clip(frames)  # (T, 3, H, W) uint8
    height, width = clip.shape[-2:]
    if height < width:
        resized = (short_side, max(int(short_side * width / height), short_side))
    else:
        resized = (max(int(short_side * height / width), short_side), short_side)
    if resized[0] < size[0] or resized[1] < size[1]:
        raise ValueError(f"frames resized to {resized[0]}x{resized[1]} are smaller than the {size[0]}x{size[1]} crop")
    clip = resize_clip(clip, resized)  # (T, C, H', W')
    along_rows = resized[0] >= resized[1]
    tops = crop_starts(resized[0], size[0], num_crops if along_rows else 1)
    lefts = crop_starts(resized[1], size[1], 1 if along_rows else num_crops)
    boxes = [(t, lefts[0]) for t in tops] if along_rows else [(tops[0], left) for left in lefts]
    views = [clip[..., t : t + size[0], left : left + size[1]] for t, left in boxes]
    return torch.stack(
        [normalize_clip(view, mean, std, in_chans=in_chans) for view in views]
    )  # (num_crops, C, T, h, w)
