"""Dense heads: shapes and parameter counts against BEiT's published UperNet ViT-B ADE20K setup.

Reference: BEiT ``semantic_segmentation/configs/beit/upernet/upernet_beit_base_12_512_slide_160k_ade20k_pt2ft.py``
on ``_base_/models/upernet_beit.py`` (the code the MAE paper's ADE20K transfer used), ViT-B: D = 768, patch 16,
512x512 crops (a 32x32 token grid), 150 classes; neck ``fpn1..fpn4`` of ``backbone/beit.py``; decode head
UPerHead(channels=768, pool_scales=(1, 2, 3, 6), BN, dropout 0.1); auxiliary FCNHead(in_index=2, channels=256,
num_convs=1, concat_input=False, loss_weight=0.4); mmcv ConvModule with a norm has no conv bias.

Parameter counts derived by hand from that layer list (C = 768, K = 150; a BatchNorm has 2C parameters):
- neck: fpn1 = ConvT(C, C, 2) + BN + ConvT(C, C, 2) = 2 * (4C^2 + C) + 2C = 4,721,664; fpn2 = ConvT = 2,360,064;
  fpn3 identity, fpn4 max-pool: 0. Neck 7,081,728.
- PPM: 4 x (1x1 conv C->C + BN) = 4 * (C^2 + 2C) = 2,365,440; its bottleneck 3x3 conv 5C -> C + BN
  = 45C^2 + 2C = 26,543,616.
- FPN: 3 lateral 1x1 (C^2 + 2C) = 1,774,080; 3 output 3x3 (9C^2 + 2C) = 15,929,856; fpn_bottleneck 3x3 4C -> C
  + BN = 36C^2 + 2C = 21,235,200; conv_seg 1x1 C -> K with bias = 115,350. UperNet 67,963,542.
- FCN auxiliary: 3x3 conv C -> 256 + BN = 1,769,472 + 512; conv_seg 256 -> K = 38,550. Auxiliary 1,808,534.
- Head, neck and auxiliary together: 76,853,804.
Feature shapes for a 512 crop: strides 4 / 8 / 16 / 32 -> (768, 128, 128), (768, 64, 64), (768, 32, 32), (768, 16, 16).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anymae.core.model.heads import LinearHead, UperNetHead, ViTPyramid, segmentation_loss

C, K = 768, 150


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_upernet_parameter_count_is_beits_vit_b_config_derived_by_hand():
    head = UperNetHead(in_channels=C, num_classes=K, patch_size=16)
    assert _count(head.pyramid) == 7_081_728
    assert _count(head.psp) == 2_365_440 + 26_543_616
    assert _count(head.lateral_convs) == 1_774_080
    assert _count(head.fpn_convs) == 15_929_856
    assert _count(head.fpn_bottleneck) == 21_235_200
    assert _count(head.cls_seg) == 115_350
    assert _count(head.aux_head) == 1_808_534
    assert _count(head) == 76_853_804


def test_vit_pyramid_gives_beits_strides_for_a_512_crop():
    pyramid = ViTPyramid(dim=C, patch_size=16).eval()
    maps = [torch.randn(1, C, 32, 32) for _ in range(4)]
    with torch.no_grad():
        shapes = [tuple(m.shape) for m in pyramid(maps)]
    assert shapes == [(1, C, 128, 128), (1, C, 64, 64), (1, C, 32, 32), (1, C, 16, 16)]
    # fpn1 is ConvT, BN, GELU, ConvT; fpn2 one ConvT; fpn3 identity; fpn4 a 2x2 max-pool (backbone/beit.py)
    kinds = [[type(m).__name__ for m in level.modules()][1:] or [type(level).__name__] for level in pyramid.levels]
    assert kinds == [
        ["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"],
        ["ConvTranspose2d"],
        ["Identity"],
        ["MaxPool2d"],
    ]


def test_vit_pyramid_reaches_strides_4_to_32_from_patch_8_and_refuses_patch_14():
    pyramid = ViTPyramid(dim=8, patch_size=8).eval()
    with torch.no_grad():
        shapes = [tuple(m.shape[-2:]) for m in pyramid([torch.randn(1, 8, 8, 12)] * 4)]
    assert shapes == [(16, 24), (8, 12), (4, 6), (2, 3)]  # a 64x96 input at strides 4, 8, 16, 32
    with pytest.raises(ValueError, match="power-of-two patch size"):
        ViTPyramid(dim=8, patch_size=14)


def test_upernet_gives_logits_and_aux_logits_at_the_input_resolution_on_a_non_square_grid():
    head = UperNetHead(in_channels=32, num_classes=5, patch_size=16, channels=16, aux_channels=8)
    maps = [torch.randn(2, 32, 4, 6) for _ in range(4)]
    logits, aux = head(maps)
    assert tuple(logits.shape) == (2, 5, 64, 96) and aux is not None and tuple(aux.shape) == (2, 5, 64, 96)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in head.parameters())
    head.eval()
    with torch.no_grad():
        logits, aux = head(maps)
    assert tuple(logits.shape) == (2, 5, 64, 96) and aux is None


def test_linear_head_is_a_1x1_conv_on_the_last_map_upsampled_bilinearly():
    head = LinearHead(in_channels=6, num_classes=3, patch_size=4)
    last = torch.randn(2, 6, 3, 5)
    logits, aux = head([torch.randn(2, 6, 3, 5), last])
    assert aux is None and tuple(logits.shape) == (2, 3, 12, 20)
    w, b = head.conv_seg.weight[:, :, 0, 0], head.conv_seg.bias
    per_token = torch.einsum("kd,ndhw->nkhw", w, last) + b[None, :, None, None]  # the probe written out
    expected = F.interpolate(per_token, size=(12, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)


def test_segmentation_loss_ignores_ignore_index_and_weights_the_auxiliary_head():
    logits, aux = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 2], [255, 1]]])
    kept = [(0, 0, 0), (2, 0, 1), (1, 1, 1)]  # (class, row, col) of the pixels that count

    def mean_nll(scores):
        log_p = scores.log_softmax(dim=1)[0]
        return -sum(log_p[k, r, c] for k, r, c in kept) / len(kept)

    loss = segmentation_loss(logits, aux, target, aux_weight=0.4, ignore_index=255)
    torch.testing.assert_close(loss, mean_nll(logits) + 0.4 * mean_nll(aux))
