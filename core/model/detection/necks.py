"""Necks from a plain ViT's stride-p maps to the 5-level pyramid torchvision's Mask R-CNN reads.

Both end at strides 4, 8, 16, 32 plus a stride-64 level (a 1x1 stride-2 max-pool of the stride-32 map, FPN's
``LastLevelMaxPool``), named ``"0"``-``"3"`` and ``"pool"`` as torchvision's ``MultiScaleRoIAlign`` (levels 0-3) and
its 5-size ``AnchorGenerator`` expect, each with ``out_channels`` (256) channels.

- :class:`FPN4Neck`, the MAE paper's A.3: 4 block maps made into strides 4 / 8 / 16 / 32 by transposed
  convolutions / identity / max-pool (:class:`~anymae.core.model.heads.ViTPyramid`, BEiT's ``fpn1..fpn4``), then
  torchvision's ``FeaturePyramidNetwork``.
- :class:`SimplePyramidNeck`, ViTDet's ``SimpleFeaturePyramid`` (detectron2 ``modeling/backbone/vit.py``;
  ``scale_factors`` (4, 2, 1, 0.5) for p = 16): the last map only; each up-sampling 2x2 stride-2 transposed
  convolution halves the channels (LayerNorm + GELU between two), then per level a 1x1 and a 3x3 convolution,
  each without bias and followed by a channel LayerNorm (``norm="LN"``).

The channel LayerNorm is detectron2's ``LayerNorm`` (eps 1e-6), timm's :class:`~timm.layers.LayerNorm2d`. ViTDet
normalises its pyramid and its heads with it because detection trains on 1-2 images per device, too few for batch
statistics; :class:`FPN4Neck` uses it between its two transposed convolutions for the same reason (BEiT's
segmentation neck uses SyncBatchNorm over batches of 16 crops).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from anymae.core.model.heads.upernet import STRIDES, ViTPyramid

__all__ = ["LEVEL_NAMES", "FPN4Neck", "SimplePyramidNeck"]

LEVEL_NAMES = ("0", "1", "2", "3")  # strides 4, 8, 16, 32; LastLevelMaxPool adds "pool" (stride 64)


def _check_patch(patch_size: int) -> None:
    if patch_size < 1 or patch_size & (patch_size - 1) or patch_size > STRIDES[-1]:
        raise ValueError(f"the pyramid needs a power-of-two patch size up to 32 (8, 16, 32), got {patch_size}")


class FPN4Neck(nn.Module):
    """4 block maps (N, D, H', W') at stride p -> OrderedDict of 5 maps (N, out_channels, H/s, W/s),
    s = 4, 8, 16, 32, 64."""

    def __init__(
        self,
        *,
        dim: int,
        patch_size: int,
        out_channels: int = 256,
        norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
    ) -> None:
        super().__init__()
        _check_patch(patch_size)
        self.out_channels = out_channels
        self.pyramid = ViTPyramid(dim=dim, patch_size=patch_size, norm_layer=norm_layer)
        self.fpn = FeaturePyramidNetwork([dim] * len(STRIDES), out_channels, extra_blocks=LastLevelMaxPool())

    def forward(self, features: Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        maps = self.pyramid(features)  # strides 4, 8, 16, 32, D channels each
        return self.fpn(OrderedDict(zip(LEVEL_NAMES, maps, strict=True)))


def _conv_ln(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """detectron2 ``Conv2d(..., bias=False, norm=get_norm("LN", out))``: conv, then channel LayerNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return [conv, LayerNorm2d(out_channels)]


def _simple_level(dim: int, factor: float, out_channels: int) -> nn.Sequential:
    """One level of ViTDet's simple pyramid: rescale a (N, D, H', W') map by ``factor``, then 1x1 + 3x3 conv-LN."""
    layers: list[nn.Module] = []
    channels = dim
    if factor > 1:
        for i in range(round(math.log2(factor))):
            if i:
                layers += [LayerNorm2d(channels), nn.GELU()]
            layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
            channels //= 2
    elif factor < 1:
        layers.append(nn.MaxPool2d(kernel_size=round(1 / factor), stride=round(1 / factor)))
    return nn.Sequential(*layers, *_conv_ln(channels, out_channels, 1), *_conv_ln(out_channels, out_channels, 3))


class SimplePyramidNeck(nn.Module):
    """The last block's map (N, D, H', W') at stride p -> OrderedDict of 5 maps (N, out_channels, H/s, W/s),
    s = 4, 8, 16, 32, 64 (ViTDet's p2..p6)."""

    def __init__(self, *, dim: int, patch_size: int, out_channels: int = 256) -> None:
        super().__init__()
        _check_patch(patch_size)
        if dim % (patch_size // STRIDES[0] or 1):
            raise ValueError(f"width {dim} cannot be halved {int(math.log2(patch_size // STRIDES[0]))} times")
        self.out_channels = out_channels
        self.levels = nn.ModuleList(_simple_level(dim, patch_size / stride, out_channels) for stride in STRIDES)
        self.top = LastLevelMaxPool()

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = [level(x) for level in self.levels]  # strides 4, 8, 16, 32
        maps, names = self.top(maps, [], list(LEVEL_NAMES))  # + the stride-64 "pool" level
        return OrderedDict(zip(names, maps, strict=True))
