"""Object detection and instance segmentation on a plain ViT: backbones for torchvision's Mask R-CNN.

:class:`FPN4Backbone` (the MAE paper's appendix A.3: 4 block maps -> strides 4-32 -> FPN) and
:class:`SimplePyramidBackbone` (ViTDet: the last map -> a simple pyramid, windowed attention as an option), and
:func:`build_mask_rcnn`, which puts one of them under torchvision's RPN, RoI heads and transform.
"""

from anymae.core.model.detection.backbones import (
    BACKBONES,
    DetectionBackbone,
    FPN4Backbone,
    SimplePyramidBackbone,
)
from anymae.core.model.detection.mask_rcnn import build_backbone, build_mask_rcnn
from anymae.core.model.detection.necks import FPN4Neck, SimplePyramidNeck
from anymae.core.model.detection.trunk import quarter_blocks, tokens_any_size

__all__ = [
    "BACKBONES",
    "DetectionBackbone",
    "FPN4Backbone",
    "FPN4Neck",
    "SimplePyramidBackbone",
    "SimplePyramidNeck",
    "build_backbone",
    "build_mask_rcnn",
    "quarter_blocks",
    "tokens_any_size",
]
