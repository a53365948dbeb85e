"""A tiny Mask R-CNN on a tiny ViT learns on demo images with finite losses, and predicts in the input's pixels."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from anymae.core.evaluate.detection import coco_ground_truth, coco_results, evaluate_coco
from anymae.core.model.detection import build_mask_rcnn
from anymae.core.model.encoder import MaskedEncoder
from anymae.modalities.image.data import ImageReader
from anymae.modalities.image.detect_demo import CATEGORIES, demo_detect_root
from anymae.modalities.image.detection import CocoDetection, collate_detection, lsj_transform, read_coco
from anymae.modalities.image.tokenizer import PatchTokenizer2d

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PATCH, DIM = 16, 64
# Fewer proposals and sampled RoIs than ViTDet's 1000 / 512: the 4-conv box head on 512 RoIs costs ~60 GFLOP a step,
# too much for a smoke test on 2 CPU cores; the code paths are the same.
SMALL = {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 64, "rpn_pre_nms_top_n_test": 200,
         "rpn_post_nms_top_n_test": 64, "box_batch_size_per_image": 32, "box_detections_per_img": 10}  # fmt: skip


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYMAE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield demo_detect_root()


def _model(backbone: str, **options):
    torch.manual_seed(0)
    tokenizer = PatchTokenizer2d(img_size=(64, 64), patch_size=PATCH, in_chans=3, embed_dim=DIM)
    encoder = MaskedEncoder(embed_dim=DIM, depth=4, num_heads=4, mlp_ratio=2.0, pos_table=tokenizer.position_table(DIM))
    return build_mask_rcnn(
        encoder, tokenizer, backbone=backbone, num_classes=len(CATEGORIES), patch_size=PATCH, min_size=96,
        max_size=96, image_mean=MEAN, image_std=STD, **(SMALL | options),
    )  # fmt: skip


@pytest.mark.parametrize(("backbone", "window"), [("fpn4", 0), ("simple_pyramid", 3)])
def test_a_few_steps_on_demo_images_give_finite_losses_that_reach_every_head(demo_root, backbone, window):
    root = demo_root
    train = read_coco(root / "annotations/train.json", root / "images/train")
    dataset = CocoDetection(train, reader=ImageReader(in_chans=3), transform=lsj_transform(96, mean=MEAN))
    loader = DataLoader(dataset, batch_size=2, shuffle=True, collate_fn=collate_detection)
    model = _model(backbone, window=window).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    torch.manual_seed(0)
    for step, (images, targets) in enumerate(loader):
        losses = model(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            assert model.backbone.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # through the ViT
            assert model.backbone.tokenizer.proj.weight.grad.abs().sum() > 0
        optimizer.step()
        if step == 2:
            break


def test_eval_mode_returns_boxes_and_masks_in_the_input_images_pixels():
    model = _model("simple_pyramid", box_score_thresh=0.0).eval()
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CATEGORIES) + 1  # + the background
    images = [torch.rand(3, 80, 112), torch.rand(3, 128, 64)]  # resized to short side 96 inside, then back
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs, strict=True):
        h, w = image.shape[-2:]
        assert len(out["boxes"]) > 0
        assert out["masks"].shape[1:] == (1, h, w)
        boxes = out["boxes"]
        assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
        assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
        assert out["labels"].min() >= 1 and out["labels"].max() <= len(CATEGORIES)


def test_an_untrained_detector_is_scored_by_cocoeval_end_to_end(demo_root):
    root = demo_root
    heldout = read_coco(root / "annotations/heldout.json", root / "images/heldout")
    dataset = CocoDetection(heldout, reader=ImageReader(in_chans=3))
    model = _model("fpn4").eval()
    predictions = []
    with torch.no_grad():
        for i in range(4):
            image, target = dataset[i]
            (out,) = model([image])
            predictions += coco_results(out, image_id=int(target["image_id"]), category_ids=heldout.category_ids)
    gt = heldout.ground_truth()
    gt["images"] = gt["images"][:4]
    scores = evaluate_coco(coco_ground_truth(gt), predictions)
    assert scores.num_images == 4 and 0 <= scores.bbox.AP <= 100
