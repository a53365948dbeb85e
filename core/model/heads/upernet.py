"""UperNet on a plain ViT, as BEiT's semantic segmentation code builds it (the MAE paper's ADE20K transfer, A.4).

Three parts, each following its reference:

- :class:`ViTPyramid`: 4 block maps, all at stride p, made into strides 4 / 8 / 16 / 32 (BEiT's ``fpn1..fpn4`` in
  ``beit/semantic_segmentation/backbone/beit.py``; for p = 16: two 2x2 stride-2 transposed convolutions with
  BatchNorm + GELU between / one / identity / 2x2 max-pool).
- :class:`PyramidPooling` + the FPN of :class:`UperNetHead` (mmseg ``decode_heads/uper_head.py`` and
  ``psp_head.py``'s PPM): each conv a ``Conv2dNormActivation`` (conv without bias, BatchNorm, ReLU) like mmcv's
  ``ConvModule``; Dropout2d(0.1) before the 1x1 classifier.
- :class:`FCNHead`: the auxiliary head on the third map (mmseg ``fcn_head.py`` with ``num_convs=1``,
  ``concat_input=False``, 256 channels; loss weight 0.4 in BEiT's ``upernet_beit.py`` base config).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from anymae.core.model.heads.base import SegmentationHead, resize_bilinear

__all__ = ["FCNHead", "PyramidPooling", "UperNetHead", "ViTPyramid"]

STRIDES = (4, 8, 16, 32)  # UperNet's input levels, as a ResNet's stages


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int) -> Conv2dNormActivation:
    """mmcv ``ConvModule`` with BN and ReLU: conv (no bias, "same" padding) -> BatchNorm2d -> ReLU, the conv
    initialised kaiming-normal (fan_out, relu) as ``ConvModule.init_weights``."""
    block = Conv2dNormActivation(in_channels, out_channels, kernel_size, inplace=False)
    nn.init.kaiming_normal_(block[0].weight, mode="fan_out", nonlinearity="relu")
    return block


def classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout2d -> Conv2d 1x1 to the classes, initialised N(0, 0.01) (mmseg ``BaseDecodeHead.cls_seg``)."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


def _rescale(dim: int, factor: float, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    """A map at stride p -> stride p / factor: log2(factor) 2x2 stride-2 transposed convolutions (BatchNorm + GELU
    between them), identity, or a max-pool of 1 / factor."""
    if factor == 1:
        return nn.Identity()
    if factor < 1:
        return nn.MaxPool2d(kernel_size=round(1 / factor), stride=round(1 / factor))
    layers: list[nn.Module] = []
    for i in range(round(math.log2(factor))):
        if i:
            layers += [norm_layer(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class ViTPyramid(nn.Module):
    """4 maps (N, D, H', W') at stride ``patch_size`` -> maps at strides 4, 8, 16, 32 (N, D, H'*p/s, W'*p/s).

    BEiT's neck: for p = 16 the factors are 4, 2, 1, 1/2; for p = 8, 2, 1, 1/2, 1/4 (its ``patch_size == 8``
    branch); any power-of-two p follows the same rule. ``norm_layer``: BEiT's SyncBatchNorm is BatchNorm2d here
    (``nn.SyncBatchNorm.convert_sync_batchnorm`` makes it synchronised under DDP)."""

    def __init__(self, *, dim: int, patch_size: int, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(f"the pyramid needs a power-of-two patch size (8, 16, 32...), got {patch_size}")
        self.levels = nn.ModuleList(_rescale(dim, patch_size / stride, norm_layer) for stride in STRIDES)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.levels):
            raise ValueError(f"the pyramid takes {len(self.levels)} block maps, got {len(features)}")
        return [level(x) for level, x in zip(self.levels, features, strict=True)]


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: (N, C, h, w) -> [x] + for each scale s: adaptive average pool to s x s,
    1x1 conv-BN-ReLU to ``channels``, bilinear back to h x w; concatenated and fused by a 3x3 conv-BN-ReLU:
    (N, channels, h, w) (mmseg ``UPerHead.psp_forward``)."""

    def __init__(self, *, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_norm_act(in_channels, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = conv_norm_act(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        pooled = [resize_bilinear(stage(x), size) for stage in self.stages]  # each (N, channels, h, w)
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (N, C + S * channels, h, w) -> (N, channels, h, w)


class FCNHead(nn.Module):
    """(N, C, h, w) -> 3x3 conv-BN-ReLU to ``channels`` -> Dropout2d -> 1x1 to the classes: (N, K, h, w)."""

    def __init__(self, *, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_norm_act(in_channels, channels, 3)
        self.cls_seg = classifier(channels, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_seg(self.conv(x))


class UperNetHead(SegmentationHead):
    """4 block maps (N, D, H', W') -> :class:`ViTPyramid` -> UperNet (PPM on the stride-32 map, FPN top-down with
    lateral 1x1 and output 3x3 convs, the 4 levels fused at stride 4 by a 3x3 conv) -> logits; an :class:`FCNHead`
    on the stride-16 map gives ``aux_logits`` in training mode (``None`` in eval mode, as mmseg runs the
    auxiliary head only when training). Both are upsampled to (N, K, H'*p, W'*p).

    Defaults are BEiT's ViT-B ADE20K config (``upernet_beit_base_12_512_slide_160k_ade20k_pt2ft.py`` on
    ``_base_/models/upernet_beit.py``): ``channels`` 768, pool scales 1, 2, 3, 6, dropout 0.1, auxiliary head 256
    channels with loss weight 0.4.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        channels: int = 768,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.num_maps, self.aux_weight, self.patch_size = len(STRIDES), aux_weight, patch_size
        self.pyramid = ViTPyramid(dim=in_channels, patch_size=patch_size, norm_layer=norm_layer)
        self.psp = PyramidPooling(in_channels=in_channels, channels=channels, pool_scales=pool_scales)
        levels = len(STRIDES) - 1  # the top level's lateral is the PPM output
        self.lateral_convs = nn.ModuleList(conv_norm_act(in_channels, channels, 1) for _ in range(levels))
        self.fpn_convs = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in range(levels))
        self.fpn_bottleneck = conv_norm_act(len(STRIDES) * channels, channels, 3)
        self.cls_seg = classifier(channels, num_classes, dropout)
        self.aux_head = FCNHead(
            in_channels=in_channels, channels=aux_channels, num_classes=num_classes, dropout=dropout
        )

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """features: 4 maps (N, D, H', W'), shallowest first -> (logits, aux logits or None), (N, K, H'*p, W'*p)."""
        size = self.output_size(features[-1])
        maps = self.pyramid(features)  # strides 4, 8, 16, 32
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, maps, strict=False)] + [self.psp(maps[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level gets the coarser one, upsampled
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        fine = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_bilinear(x, fine) for x in outs], dim=1))  # (N, 4C, H/4, W/4)
        logits = resize_bilinear(self.cls_seg(fused), size)
        aux = resize_bilinear(self.aux_head(maps[2]), size) if self.training else None
        return logits, aux
