"""Semantic segmentation scores and the inference they are measured with (mmseg's conventions).

Scores come from one confusion matrix summed over the whole held-out split (rows: truth, columns: prediction,
pixels of ``ignore_index`` left out), as mmseg's ``IoUMetric`` / ``mean_iou``: IoU_k = TP / (TP + FP + FN); a class
neither in the truth nor in the predictions has no IoU (NaN) and is left out of the mean; pixel accuracy is the
share of counted pixels labelled right (mmseg's ``aAcc``).

Inference at full resolution is mmseg's ``slide_inference``: crops of ``crop`` every ``stride`` pixels, the last
crop of a row or column moved back to end at the border, each pixel's logits averaged over the crops that cover it
(a count map); an image smaller than the crop is padded at the bottom and right and the padding cut off the result.
Test-time augmentation (``flip``, ``scales``) averages the softmax of each view, as mmseg's ``aug_test``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anymae.core.model.heads.base import resize_bilinear

__all__ = [
    "ConfusionMatrix",
    "SegmentationScores",
    "confusion_matrix",
    "crop_origins",
    "iou_per_class",
    "segment_image",
    "slide_inference",
]


def confusion_matrix(pred: Tensor, target: Tensor, *, num_classes: int, ignore_index: int = 255) -> Tensor:
    """pred, target: class indices of the same shape -> (K, K) int64 counts, row = truth, column = prediction.

    Pixels whose truth is ``ignore_index`` are not counted; a truth or prediction outside 0..K-1 (other than an
    ignored truth) raises: a label the model has no class for would otherwise change the mIoU silently."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    truth, guess = target[keep].long(), pred[keep].long()
    for name, values in (("truth", truth), ("prediction", guess)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)].unique()[:10].tolist()
            raise ValueError(
                f"{name} has class indices {bad} outside 0..{num_classes - 1} (ignore_index {ignore_index})"
            )
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(matrix: Tensor) -> Tensor:
    """(K, K) confusion matrix -> (K,) float64 IoU = TP / (TP + FP + FN); NaN where the union is 0."""
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


@dataclass(frozen=True)
class SegmentationScores:
    """mIoU over the classes that have an IoU, each class's IoU (NaN: absent from truth and prediction), pixel
    accuracy, and how many pixels were counted. Fractions in [0, 1]."""

    miou: float
    per_class_iou: tuple[float, ...]
    pixel_accuracy: float
    pixels: int


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix batch by batch; ``scores()`` turns it into :class:`SegmentationScores`.
    ``matrix`` is a plain int64 tensor, to be summed over ranks (``all_reduce``) before scoring."""

    def __init__(self, *, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: (N, H, W) class indices (any device)."""
        found = confusion_matrix(pred, target, num_classes=self.num_classes, ignore_index=self.ignore_index)
        self.matrix += found.cpu()

    def scores(self) -> SegmentationScores:
        iou = iou_per_class(self.matrix)
        total = int(self.matrix.sum())
        present = iou[~iou.isnan()]
        return SegmentationScores(
            miou=float(present.mean()) if present.numel() else math.nan,
            per_class_iou=tuple(iou.tolist()),
            pixel_accuracy=float(self.matrix.diagonal().sum()) / total if total else math.nan,
            pixels=total,
        )


def crop_origins(size: int, crop: int, stride: int) -> list[int]:
    """Where the crops start along one axis of ``size`` pixels (mmseg ``slide_inference``): every ``stride`` pixels,
    max(size - crop + stride - 1, 0) // stride + 1 of them, each moved back so that it ends inside the image."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


def slide_inference(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
) -> Tensor:
    """image: (N, C, H, W) -> logits (N, K, H, W), averaged over the ``crop``-sized windows that cover each pixel.

    ``model``: (N, C, h_crop, w_crop) -> logits (N, K, h_crop, w_crop); it only ever sees windows of exactly
    ``crop`` (an image smaller than the crop is zero-padded at the bottom and right first)."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    n, _, h, w = image.shape
    padded = F.pad(image, (0, max(w_crop - w, 0), 0, max(h_crop - h, 0)))  # (N, C, max(H, h_crop), max(W, w_crop))
    ph, pw = padded.shape[-2:]
    logits = image.new_zeros(n, num_classes, ph, pw)
    count = image.new_zeros(1, 1, ph, pw)
    for y in crop_origins(ph, h_crop, h_stride):
        for x in crop_origins(pw, w_crop, w_stride):
            window = padded[:, :, y : y + h_crop, x : x + w_crop]
            logits[:, :, y : y + h_crop, x : x + w_crop] += model(window)
            count[:, :, y : y + h_crop, x : x + w_crop] += 1
    return (logits / count)[:, :, :h, :w]


def segment_image(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> Tensor:
    """image: (N, C, H, W) -> class probabilities (N, K, H, W): the softmax of :func:`slide_inference`, averaged
    over the image resized by each of ``scales`` (bilinear; the probabilities resized back to H x W) and, with
    ``flip``, its horizontal mirror (the probabilities mirrored back)."""
    size = image.shape[-2:]
    total = image.new_zeros(image.shape[0], num_classes, *size)
    views = 0
    for scale in scales:
        scaled = image if scale == 1 else resize_bilinear(image, [round(s * scale) for s in size])
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            probs = slide_inference(model, view, num_classes=num_classes, crop=crop, stride=stride).softmax(dim=1)
            probs = probs.flip(-1) if mirrored else probs
            total += resize_bilinear(probs, size)
            views += 1
    return total / views
