"""COCO instances read with their images: bad input named and counted, masks decoded as PIL draws them, augmentation
moving image, boxes and masks together, and the demo set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from anymae.core.data.samples import BadSampleError, DataError
from anymae.modalities.image.data import ImageReader
from anymae.modalities.image.detect_demo import CATEGORIES, NUM_HELDOUT, NUM_TRAIN, demo_detect_root
from anymae.modalities.image.detection import CocoDetection, flip_transform, lsj_transform, read_coco

H, W = 40, 60
TRIANGLE = [10.0, 5.0, 30.0, 5.0, 20.0, 25.0]


def _write_set(tmp_path, annotations, *, images=("a.png", "b.png"), extra_images=()):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (n for n in images if n.endswith(".png")):  # other files are written by the test
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / name)
    entries = [{"id": i, "file_name": name, "height": H, "width": W} for i, name in enumerate(images, start=1)]
    entries += [{"id": 100 + i, "file_name": name, "height": H, "width": W} for i, name in enumerate(extra_images)]
    coco = {"images": entries, "annotations": annotations,
            "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]}  # fmt: skip
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    return path, folder


def _ann(ann_id, image_id, category, bbox, segmentation=None, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": 0,
            "segmentation": [TRIANGLE] if segmentation is None else segmentation, **extra}  # fmt: skip


def test_bad_annotations_are_named_counted_and_dropped(tmp_path):
    annotations = [
        _ann(1, 1, 3, [10, 5, 20, 20]),
        _ann(2, 7, 3, [0, 0, 5, 5]),  # image 7 is not listed
        _ann(3, 1, 99, [0, 0, 5, 5]),  # category 99 is not listed
        _ann(4, 1, 8, [70, 5, 10, 10]),  # wholly right of the 60 px wide image
        _ann(5, 1, 8, [5, 5, 0, 10]),  # zero width
        _ann(6, 1, 8, [50, 30, 20, 20]),  # reaches outside: clipped to [50, 30, 10, 10]
        _ann(7, 1, 3, [0, 0, 10, 10], iscrowd=1),
        _ann(8, 1, 3, [0, 0, 10, 10], segmentation=[[1.0, 2.0, 3.0, 4.0]]),  # a 2-point polygon only
    ]
    path, folder = _write_set(tmp_path, annotations, extra_images=("gone.png",))
    instances = read_coco(path, folder)
    report = instances.report
    assert [im.id for im in instances.images] == [1, 2]
    assert report.missing_files == [str(folder / "gone.png")]
    assert report.orphans == [2] and dict(report.unknown_categories) == {99: 1}
    assert report.empty_boxes == [4, 5] and report.clipped == 1 and report.bad_polygons == 1
    assert report.crowd == 1 and report.negatives == 1  # image 2 has no annotation
    assert [a["id"] for a in instances.annotations[1]] == [1, 6, 7]
    assert instances.annotations[1][1]["bbox"] == [50.0, 30.0, 10.0, 10.0]
    text = report.summary()
    assert "1 images listed but not found" in text and "unknown category ids (id: annotations) {99: 1}" in text
    assert "2 boxes of zero size or outside their image dropped, e.g. annotation ids [4, 5]" in text


def test_a_sample_is_torchvisions_target_with_masks_as_pil_draws_them(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 6), np.uint8), ((30, 6), (40, 14)))))
    annotations = [
        _ann(1, 1, 3, [10, 5, 20, 20]),
        _ann(2, 1, 8, [40, 30, 6, 4], segmentation={"size": [H, W], "counts": rle["counts"].decode("ascii")}),
        _ann(3, 1, 8, [0, 0, 8, 8], iscrowd=1),  # not a training target
    ]
    path, folder = _write_set(tmp_path, annotations)
    dataset = CocoDetection(read_coco(path, folder), reader=ImageReader(in_chans=3))
    image, target = dataset[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["labels"].tolist() == [1, 2]  # category ids 3, 8 -> labels 1, 2 (0 is the background)
    assert target["boxes"].tolist() == [[10, 5, 30, 25], [40, 30, 46, 34]]
    reference = Image.new("L", (W, H), 0)
    ImageDraw.Draw(reference).polygon(list(zip(TRIANGLE[0::2], TRIANGLE[1::2], strict=True)), fill=1)
    drawn = torch.from_numpy(np.asarray(reference)).bool()
    polygon = target["masks"][0].bool()
    assert (polygon ^ drawn).sum() <= 0.1 * drawn.sum()  # pycocotools and PIL rasterise edges differently
    assert target["masks"][1].sum() == 24 and target["masks"][1, 30:34, 40:46].all()
    assert int(target["image_id"]) == 1
    _, negative = dataset[1]
    assert negative["boxes"].shape == (0, 4) and negative["masks"].shape == (0, H, W)


def test_a_corrupt_image_and_a_wrong_size_are_bad_samples_naming_the_file(tmp_path):
    path, folder = _write_set(tmp_path, [_ann(1, 1, 3, [10, 5, 20, 20])])
    (folder / "a.png").write_bytes(b"not a png")
    Image.new("RGB", (W + 4, H)).save(folder / "b.png")
    dataset = CocoDetection(read_coco(path, folder), reader=ImageReader(in_chans=3))
    with pytest.raises(BadSampleError, match=r"a\.png"):
        dataset[0]
    with pytest.raises(BadSampleError, match=r"b.png is 40x64 but its annotations say 40x60"):
        dataset[1]


def test_n_band_images_are_read_through_the_image_plugins_reader(tmp_path):
    path, folder = _write_set(tmp_path, [_ann(1, 1, 3, [10, 5, 20, 20])], images=("a.npy",))
    bands = np.random.default_rng(1).integers(0, 65535, (5, H, W), dtype=np.uint16)
    np.save(folder / "a.npy", bands)
    image, _ = CocoDetection(read_coco(path, folder), reader=ImageReader(in_chans=5))[0]
    torch.testing.assert_close(image, torch.from_numpy(bands.astype(np.float32) / 65535))


def test_no_images_left_is_a_data_error(tmp_path):
    path, folder = _write_set(tmp_path, [], images=(), extra_images=("gone.png",))
    with pytest.raises(DataError, match="none of its 1 images"):
        read_coco(path, folder)


def test_flip_moves_image_boxes_and_masks_together(tmp_path):
    path, folder = _write_set(tmp_path, [_ann(1, 1, 3, [10, 5, 20, 20])])
    instances = read_coco(path, folder)
    plain = CocoDetection(instances, reader=ImageReader(in_chans=3))
    flipped = CocoDetection(instances, reader=ImageReader(in_chans=3), transform=flip_transform())
    image, target = plain[0]
    torch.manual_seed(3)
    while True:  # the flip has probability 0.5
        f_image, f_target = flipped[0]
        if not torch.equal(f_image, image):
            break
    torch.testing.assert_close(f_image, image.flip(-1))
    torch.testing.assert_close(f_target["masks"], target["masks"].flip(-1))
    assert f_target["boxes"].tolist() == [[W - 30, 5, W - 10, 25]]


def test_large_scale_jitter_keeps_boxes_on_their_masks_and_pads_a_square_of_the_mean(tmp_path):
    annotations = [
        _ann(1, 1, 3, [10, 5, 20, 20]),
        _ann(2, 1, 8, [40, 20, 15, 15], segmentation=[[40, 20, 55, 20, 55, 35, 40, 35]]),
    ]
    path, folder = _write_set(tmp_path, annotations)
    mean = (0.25, 0.5, 0.75)
    dataset = CocoDetection(
        read_coco(path, folder), reader=ImageReader(in_chans=3), transform=lsj_transform(64, mean=mean)
    )
    torch.manual_seed(0)
    for _ in range(20):
        image, target = dataset[0]
        assert image.shape == (3, 64, 64)
        masks = target["masks"].bool()
        assert len(target["boxes"]) == len(target["labels"]) == len(masks)
        for box, mask in zip(target["boxes"], masks, strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # One scale, 0.5: the 40 x 60 image fits a 32 x 32 target by a factor 32/60 -> 21 x 32, padded with the mean.
    one_scale = lsj_transform(64, mean=mean, min_scale=0.5, max_scale=0.5, hflip=False)
    fixed = CocoDetection(dataset.instances, reader=ImageReader(in_chans=3), transform=one_scale)
    image, target = fixed[0]
    pad = torch.tensor(mean).view(3, 1, 1)
    assert torch.equal(image[:, 21:, :], pad.expand(3, 43, 64)) and torch.equal(image[:, :, 32:], pad.expand(3, 64, 32))
    square = torch.tensor([40, 20, 55, 35]) * 32 / 60  # annotation 2's box, scaled
    assert torch.allclose(target["boxes"][1], square, atol=1.0)


def test_the_demo_set_is_coco_with_polygons_inside_its_images(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYMAE_CACHE", str(tmp_path))
    root = demo_detect_root()
    train = read_coco(root / "annotations/train.json", root / "images/train")
    heldout = read_coco(root / "annotations/heldout.json", root / "images/heldout")
    assert (train.report.images, heldout.report.images) == (NUM_TRAIN, NUM_HELDOUT)
    assert train.class_names == CATEGORIES and not train.report.lines()  # clean: nothing dropped or clipped
    assert 2 * NUM_TRAIN <= train.report.annotations <= 3 * NUM_TRAIN
    assert train.report.negatives == NUM_TRAIN // 25
    image, target = CocoDetection(train, reader=ImageReader(in_chans=3))[1]
    assert image.shape == (3, 96, 96) and len(target["boxes"]) >= 1
    for box, mask in zip(target["boxes"], target["masks"].bool(), strict=True):  # the polygon fills its box
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert abs(xs.min().item() - box[0].item()) <= 1 and abs(ys.max().item() + 1 - box[3].item()) <= 1
