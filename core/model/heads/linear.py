"""The cheap dense probe: one 1x1 convolution on the last block's map, upsampled to the input's resolution."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from anymae.core.model.heads.base import SegmentationHead, resize_bilinear

__all__ = ["LinearHead"]


class LinearHead(SegmentationHead):
    """(N, D, H', W') of the last block -> Conv2d(D, K, 1) -> bilinear to (N, K, H'*p, W'*p); no auxiliary head.

    A per-token linear classifier, the dense counterpart of the paper's linear probe: what the features hold
    without a decoder to mix them."""

    def __init__(self, *, in_channels: int, num_classes: int, patch_size: int) -> None:
        super().__init__()
        self.num_maps, self.aux_weight, self.patch_size = 1, 0.0, patch_size
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights: conv_seg N(0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """features: maps (N, D, H', W'), the last one read -> (logits (N, K, H'*p, W'*p), None)."""
        last = features[-1]
        return resize_bilinear(self.conv_seg(last), self.output_size(last)), None
