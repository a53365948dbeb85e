"""torchvision's Mask R-CNN on an MAE encoder, with ViTDet's heads (detectron2 ``configs/common/models/
mask_rcnn_vitdet.py`` on ``mask_rcnn_fpn.py``).

Everything but the backbone is torchvision's (``torchvision.models.detection``): the RPN with two 3x3 convolutions
(ViTDet: ``proposal_generator.head.conv_dims = [-1, -1]``), RoIAlign on levels 0-3, a box head of 4 convolutions and
1 fully connected layer of 1024 ("4conv1fc"), a mask head of 4 convolutions, the heads' convolutions normalised by a
channel LayerNorm (``conv_norm = "LN"``), and ``GeneralizedRCNNTransform`` (resize so that the short side is
``min_size`` and the long side at most ``max_size``, normalise with the MAE's mean and std, pad to a multiple of
32). ViTDet's RPN keeps 1000 proposals per image after NMS in training (``post_nms_topk=(1000, 1000)``);
torchvision's default 2000 is changed to it. The rest are torchvision's defaults, which are detectron2's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.layers import LayerNorm2d
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead

from anymae.core.model.detection.backbones import BACKBONES, DetectionBackbone, SimplePyramidBackbone
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.tokenizer import TokenEmbedder

__all__ = ["build_backbone", "build_mask_rcnn"]

# detectron2 mask_rcnn_fpn.py: one anchor size per level p2..p6, aspect ratios 0.5, 1, 2.
ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)


def build_backbone(
    encoder: MaskedEncoder,
    tokenizer: TokenEmbedder,
    *,
    backbone: str,
    patch_size: int,
    pos_grid: tuple[int, int] | None = None,
    out_channels: int = 256,
    window: int = 0,
    global_blocks: Sequence[int] | None = None,
) -> DetectionBackbone:
    """The backbone named ``backbone`` (``fpn4`` or ``simple_pyramid``) on ``encoder`` and ``tokenizer``."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown detection backbone {backbone!r}; registered: {sorted(BACKBONES)}")
    common = {"tokenizer": tokenizer, "encoder": encoder, "patch_size": patch_size, "pos_grid": pos_grid}
    if BACKBONES[backbone] is SimplePyramidBackbone:
        return SimplePyramidBackbone(**common, out_channels=out_channels, window=window, global_blocks=global_blocks)
    if window or global_blocks is not None:
        raise ValueError(
            f"windowed attention (window {window}, global_blocks {global_blocks}) is ViTDet's simple_pyramid option; "
            f"{backbone} reads 4 blocks with the CLS token and global attention, as the MAE paper's A.3"
        )
    return BACKBONES[backbone](**common, out_channels=out_channels)


def build_mask_rcnn(
    encoder: MaskedEncoder,
    tokenizer: TokenEmbedder,
    *,
    backbone: str,
    num_classes: int,
    patch_size: int,
    min_size: int | tuple[int, ...],
    max_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    pos_grid: tuple[int, int] | None = None,
    window: int = 0,
    global_blocks: Sequence[int] | None = None,
    out_channels: int = 256,
    **detector_options: Any,
) -> MaskRCNN:
    """A Mask R-CNN for ``num_classes`` object categories (K): its predictors have K + 1 outputs, 0 being the
    background, so target labels run 1..K (torchvision's convention).

    ``image_mean`` / ``image_std``: the MAE's input normalisation, one value per channel, for images in [0, 1] (the
    model normalises them). ``min_size``: a tuple draws one short side per training batch (multi-scale
    resize-and-flip training); LSJ training gives images already ``max_size`` square, which the transform keeps.
    ``detector_options``: any other ``MaskRCNN`` keyword (``box_score_thresh``, ``box_detections_per_img``, ...).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes is the number of object categories (at least 1), got {num_classes}")
    if len(image_mean) != len(image_std):
        raise ValueError(f"image_mean has {len(image_mean)} values, image_std {len(image_std)}: one per channel each")
    body = build_backbone(
        encoder, tokenizer, backbone=backbone, patch_size=patch_size, pos_grid=pos_grid, out_channels=out_channels,
        window=window, global_blocks=global_blocks,
    )  # fmt: skip
    anchors = AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS)
    options: dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(out_channels, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=LayerNorm2d),
        "mask_head": MaskRCNNHeads(out_channels, [256] * 4, 1, norm_layer=LayerNorm2d),
        "rpn_post_nms_top_n_train": 1000,
    }
    options.update(detector_options)
    return MaskRCNN(
        body, num_classes=num_classes + 1, min_size=min_size, max_size=max_size, image_mean=list(image_mean),
        image_std=list(image_std), **options,
    )  # fmt: skip
