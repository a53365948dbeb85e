"""Detection backbones on a plain ViT: pyramid shapes, neck sizes, and the encoder read at any size and in windows.

Reference numbers (detectron2, ``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_{b,l}_100ep.py`` on
``configs/common/models/mask_rcnn_vitdet.py`` and ``projects/ViTDet/configs/common/coco_loader_lsj.py``):
ViT-B/16 at 1024 px, drop path 0.1 (ViT-L 0.4), window 14, global blocks 2, 5, 8, 11 (ViT-L 5, 11, 17, 23), no
CLS token in the blocks, relative position biases (not added here: the MAE encoder has none), simple pyramid
``scale_factors`` (4, 2, 1, 0.5) + LastLevelMaxPool, 256 channels, LN; RPN 2 convs, box head 4 conv + 1 fc (1024),
mask head 4 convs, all LN; LSJ: flip, ResizeScale 0.1-2.0 of 1024, FixedSizeCrop 1024, test short side 1024 (max
1024); AdamW lr 1e-4, weight decay 0.1, layer decay 0.7 (ViT-L 0.8), batch 64, 184,375 iterations (100 epochs),
lr x0.1 at 163,889 and 177,546, 250 warm-up iterations. ViTDet paper Table 4 (ViT-B, MAE, Mask R-CNN): box AP
51.6, mask AP 45.9; the MAE paper's Table 4 (its A.3 FPN backbone): 50.3 / 44.9.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

from anymae.core.model.detection import (
    FPN4Backbone,
    FPN4Neck,
    SimplePyramidBackbone,
    SimplePyramidNeck,
    build_backbone,
    quarter_blocks,
    tokens_any_size,
)
from anymae.core.model.detection.trunk import run_windowed, window_partition, window_unpartition
from anymae.core.model.encoder import MaskedEncoder
from anymae.modalities.image.tokenizer import PatchTokenizer2d

PATCH, DIM, DEPTH, HEADS = 8, 32, 4, 4
PRETRAIN = (32, 32)


def _tiny() -> tuple[PatchTokenizer2d, MaskedEncoder]:
    torch.manual_seed(0)
    tokenizer = PatchTokenizer2d(img_size=PRETRAIN, patch_size=PATCH, in_chans=3, embed_dim=DIM)
    encoder = MaskedEncoder(
        embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, pos_table=tokenizer.position_table(DIM)
    )
    for p in encoder.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return tokenizer, encoder.eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_simple_pyramid_neck_of_vit_b_has_the_hand_counted_parameters():
    # ViTDet's neck on D = 768, 256 channels: transposed 2x2 convs with bias, LN (2C), convs without bias.
    d, c = 768, 256
    deconv = lambda cin, cout: cin * cout * 4 + cout  # noqa: E731
    tail = lambda cin: cin * c + 2 * c + c * c * 9 + 2 * c  # noqa: E731  1x1 + LN + 3x3 + LN
    stride4 = deconv(d, d // 2) + 2 * (d // 2) + deconv(d // 2, d // 4) + tail(d // 4)
    stride8 = deconv(d, d // 2) + tail(d // 2)
    expected = stride4 + stride8 + 2 * tail(d)
    assert expected == 5_560_000
    assert _count(SimplePyramidNeck(dim=d, patch_size=16, out_channels=c)) == expected


def test_fpn4_neck_of_vit_b_has_the_hand_counted_parameters():
    # BEiT's fpn1..fpn4 on D = 768 (3 transposed convs, one LN between the stride-4 pair) + torchvision's FPN
    # (per level: 1x1 lateral D -> 256 and 3x3 output 256 -> 256, both with bias).
    d, c = 768, 256
    pyramid = 3 * (d * d * 4 + d) + 2 * d
    fpn = 4 * (d * c + c) + 4 * (c * c * 9 + c)
    assert pyramid + fpn == 10_229_504
    assert _count(FPN4Neck(dim=d, patch_size=16, out_channels=c)) == pyramid + fpn


@pytest.mark.parametrize("backbone", ["fpn4", "simple_pyramid"])
@pytest.mark.parametrize("size", [(64, 96), (32, 32), (96, 64)])
def test_backbones_give_five_levels_of_256_channels_at_strides_4_to_64(backbone, size):
    tokenizer, encoder = _tiny()
    body = build_backbone(encoder, tokenizer, backbone=backbone, patch_size=PATCH, window=2 * (backbone != "fpn4"))
    with torch.no_grad():
        out = body(torch.randn(2, 3, *size))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    h, w = size
    strides = [(2, 256, h // s, w // s) for s in (4, 8, 16, 32)]
    pool = (2, 256, -(-h // 64), -(-w // 64))  # a 1x1 stride-2 max-pool of the stride-32 map keeps its odd edge
    assert [tuple(x.shape) for x in out.values()] == [*strides, pool]
    assert body.out_channels == 256


def test_tokens_at_any_size_equal_the_patch_convolution_on_the_whole_image():
    tokenizer, _ = _tiny()
    image = torch.randn(2, 3, 56, 80)  # 7 x 10 patches: 70 tokens, 4 full tiles of 16 and a part-filled fifth
    tokens, grid = tokens_any_size(tokenizer, image, PATCH)
    reference = F.conv2d(image, tokenizer.proj.weight, tokenizer.proj.bias, stride=PATCH)  # (N, D, 7, 10)
    assert grid == (7, 10)
    torch.testing.assert_close(tokens, reference.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_tokens_refuse_a_size_not_divisible_by_the_patch():
    tokenizer, _ = _tiny()
    with pytest.raises(ValueError, match="not divisible by patch 8"):
        tokens_any_size(tokenizer, torch.randn(1, 3, 60, 64), PATCH)


def test_global_trunk_matches_timm_without_a_cls_token_at_a_new_size():
    # ViTDet's reading: no CLS token, positions resampled to the grid; timm's ViT with class_token=False and
    # dynamic_img_size resamples its own table (timm resample_abs_pos_embed) and runs the same blocks.
    tokenizer, encoder = _tiny()
    reference = VisionTransformer(
        img_size=PRETRAIN, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=0,
        class_token=False, global_pool="avg", dynamic_img_size=True,
    ).eval()  # fmt: skip
    state = {f"blocks.{k}": v for k, v in encoder.blocks.state_dict().items()}
    state |= {f"patch_embed.{k}": v for k, v in tokenizer.state_dict().items()}
    state |= {"pos_embed": encoder.pos_embed[:, 1:].clone()}
    reference.load_state_dict(state, strict=False)
    image = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        tokens, grid = tokens_any_size(tokenizer, image, PATCH)
        ours = run_windowed(encoder, tokens, grid=grid, pos_grid=tokenizer.grid, window=0, global_blocks=[])
        (theirs,) = reference.forward_intermediates(
            image, indices=[DEPTH - 1], norm=False, output_fmt="NCHW", intermediates_only=True
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_windowed_block_equals_the_timm_block_run_on_each_window_alone():
    torch.manual_seed(1)
    block = Block(dim=DIM, num_heads=HEADS, mlp_ratio=4.0, qkv_bias=True).eval()
    encoder = MaskedEncoder(
        embed_dim=DIM, depth=1, num_heads=HEADS, mlp_ratio=4.0, pos_table=torch.zeros(24, DIM), cls_token=False
    ).eval()
    encoder.blocks[0].load_state_dict(block.state_dict())
    x = torch.randn(2, 4 * 6, DIM)  # a 4 x 6 grid in 2 x 3 windows of 2 x 2 tokens
    with torch.no_grad():
        ours = run_windowed(encoder, x, grid=(4, 6), pos_grid=(4, 6), window=2, global_blocks=[])  # (2, D, 4, 6)
        grid = x.reshape(2, 4, 6, DIM)
        for top in (0, 2):
            for left in (0, 2, 4):
                window = grid[:, top : top + 2, left : left + 2].reshape(2, 4, DIM)
                expected = block(window).reshape(2, 2, 2, DIM).permute(0, 3, 1, 2)
                torch.testing.assert_close(ours[:, :, top : top + 2, left : left + 2], expected, rtol=1e-5, atol=1e-5)


def test_window_partition_pads_to_a_multiple_and_unpartitions_exactly():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 9, 3)
    torch.testing.assert_close(windows[0].reshape(3, 3, 3), x[0, :3, :3])  # the first window: rows 0-2, cols 0-2
    assert windows[5].reshape(3, 3, 3)[2:, :, :].abs().sum() == 0  # window (1, 2) of sample 0: row 5 is padding
    torch.testing.assert_close(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_windowed_attention_adds_no_parameter_and_keeps_the_encoder_keys():
    tokenizer, encoder = _tiny()
    keys = set(encoder.state_dict())
    body = SimplePyramidBackbone(tokenizer=tokenizer, encoder=encoder, patch_size=PATCH, window=2)
    assert {k.removeprefix("encoder.") for k in body.state_dict() if k.startswith("encoder.")} == keys
    assert body.global_blocks == [0, 1, 2, 3]  # ceil(4k/4) - 1 for a depth of 4


@pytest.mark.parametrize(("depth", "blocks"), [(12, [2, 5, 8, 11]), (24, [5, 11, 17, 23]), (32, [7, 15, 23, 31])])
def test_quarter_blocks_are_vitdets_global_blocks(depth, blocks):
    assert quarter_blocks(depth) == blocks


def test_unknown_backbone_and_windows_on_fpn4_are_refused():
    tokenizer, encoder = _tiny()
    with pytest.raises(ValueError, match=r"registered: \['fpn4', 'simple_pyramid'\]"):
        build_backbone(encoder, tokenizer, backbone="fpn5", patch_size=PATCH)
    with pytest.raises(ValueError, match="simple_pyramid option"):
        build_backbone(encoder, tokenizer, backbone="fpn4", patch_size=PATCH, window=2)
    assert isinstance(build_backbone(encoder, tokenizer, backbone="fpn4", patch_size=PATCH), FPN4Backbone)
