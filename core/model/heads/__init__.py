"""Dense prediction heads on a ViT encoder's block maps: per-pixel class scores at the input's resolution.

One head per file (mmsegmentation's ``decode_heads/``): :class:`LinearHead` (a 1x1 convolution on the last
block, the cheap probe) and :class:`UperNetHead` (BEiT's ADE20K setup, which the MAE paper used: appendix A.4).
"""

from anymae.core.model.heads.base import SegmentationHead, resize_bilinear, segmentation_loss
from anymae.core.model.heads.linear import LinearHead
from anymae.core.model.heads.upernet import FCNHead, PyramidPooling, UperNetHead, ViTPyramid

__all__ = [
    "FCNHead",
    "LinearHead",
    "PyramidPooling",
    "SegmentationHead",
    "UperNetHead",
    "ViTPyramid",
    "resize_bilinear",
    "segmentation_loss",
]
