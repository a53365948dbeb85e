"""What every dense head is: block maps in, class scores per input pixel out, and the loss they train with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationHead", "resize_bilinear", "segmentation_loss"]


def resize_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """(N, C, h, w) -> (N, C, H, W), bilinear with ``align_corners=False``: mmseg's ``resize`` of maps inside its
    heads, of a head's output to the label size (``BaseDecodeHead.losses``) and to the image size at inference."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationHead(nn.Module, ABC):
    """Block maps of the encoder -> ``(logits, aux_logits)``, both (N, K, H'*p, W'*p): the input's resolution for
    tokens of ``p`` x ``p`` pixels on an H' x W' grid.

    Subclasses set in ``__init__``: ``num_maps``, how many block maps ``forward`` reads (the blocks a caller
    picks, shallowest first); ``aux_weight``, the loss weight of ``aux_logits`` (0 for a head without one, whose
    ``aux_logits`` is ``None``); ``patch_size`` (``p``).
    """

    num_maps: int
    aux_weight: float
    patch_size: int

    @abstractmethod
    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """features: ``num_maps`` maps (N, D, H', W') -> logits (N, K, H'*p, W'*p), aux logits or None."""

    def output_size(self, feature: Tensor) -> tuple[int, int]:
        """The input's (H, W) for a map (N, D, H', W') of its tokens."""
        return feature.shape[-2] * self.patch_size, feature.shape[-1] * self.patch_size


def segmentation_loss(
    logits: Tensor, aux_logits: Tensor | None, target: Tensor, *, aux_weight: float, ignore_index: int
) -> Tensor:
    """Cross-entropy per pixel averaged over the pixels that are not ``ignore_index``, plus ``aux_weight`` times the
    auxiliary head's (mmseg's ``CrossEntropyLoss``, ``loss_weight`` 1.0 and 0.4 in BEiT's UperNet config).

    logits, aux_logits: (N, K, H, W); target: (N, H, W) class indices."""
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if aux_logits is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(aux_logits, target, ignore_index=ignore_index)
    return loss
