"""Segmentation data: ADE20K layout and list files, masks read as stored, bad pairs named, and the training
pipeline moving image and mask together. Files are written here with PIL, tifffile and numpy."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torchvision import tv_tensors

from anymae.core.data.samples import BadSampleError, DataError
from anymae.modalities.image.data import ImageReader
from anymae.modalities.image.segmentation import (
    RandomRescale,
    SegmentationFiles,
    ade20k_pairs,
    eval_transform,
    read_pair_list,
    train_transform,
)

IGNORE = 255
PLAIN = eval_transform(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _ade20k(tmp_path, rng):
    """images/training/{a,b,c}.png with masks for a and b only."""
    for name in ("a", "b", "c"):
        (tmp_path / "images" / "training").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(rng, 6, 8)).save(tmp_path / "images" / "training" / f"{name}.png")
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    masks = {name: rng.integers(0, 4, size=(6, 8), dtype=np.uint8) for name in ("a", "b")}
    for name, mask in masks.items():
        Image.fromarray(mask, mode="L").save(tmp_path / "annotations" / "training" / f"{name}.png")
    return masks


def _dataset(pairs, *, num_classes=4, transform=PLAIN, reader=None, **kwargs):
    reader = reader or ImageReader(in_chans=3)
    return SegmentationFiles(pairs, reader=reader, transform=transform, num_classes=num_classes, **kwargs)


def test_ade20k_layout_pairs_by_stem_and_reads_image_and_mask_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    masks = _ade20k(tmp_path, rng)
    pairs = ade20k_pairs(tmp_path, "training")
    assert [(i.name, m.name if m else None) for i, m in pairs] == [
        ("a.png", "a.png"),
        ("b.png", "b.png"),
        ("c.png", None),
    ]
    image, mask = _dataset(pairs)[1]
    expected = np.asarray(Image.open(tmp_path / "images" / "training" / "b.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(mask.numpy(), masks["b"])
    assert mask.dtype == torch.int64


def test_an_image_without_a_mask_is_a_bad_sample_that_names_it(tmp_path):
    _ade20k(tmp_path, np.random.default_rng(0))
    with pytest.raises(BadSampleError, match=r"c\.png has no mask"):
        _dataset(ade20k_pairs(tmp_path, "training"))[2]


def test_reduce_zero_label_ignores_zero_and_shifts_the_rest(tmp_path):
    Image.fromarray(_rgb(np.random.default_rng(0), 1, 4)).save(tmp_path / "x.jpg")
    Image.fromarray(np.array([[0, 1, 150, 2]], dtype=np.uint8), mode="L").save(tmp_path / "x.png")
    _, mask = _dataset([(tmp_path / "x.jpg", tmp_path / "x.png")], num_classes=150, reduce_zero_label=True)[0]
    assert mask.tolist() == [[IGNORE, 0, 149, 1]]  # ADE20K: 0 "other" ignored, 1..150 -> 0..149


@pytest.mark.parametrize(
    ("mask", "num_classes", "message"),
    [
        (np.zeros((5, 8), np.uint8), 4, r"mask .*m\.png is 5x8 but image .*i\.png is 6x8"),
        (np.full((6, 8), 4, np.uint8), 4, r"mask .*m\.png has class indices \[4\] outside 0..3"),
    ],
)
def test_a_mask_of_another_size_or_an_unknown_class_is_a_bad_sample(tmp_path, mask, num_classes, message):
    Image.fromarray(_rgb(np.random.default_rng(0), 6, 8)).save(tmp_path / "i.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    with pytest.raises(BadSampleError, match=message):
        _dataset([(tmp_path / "i.png", tmp_path / "m.png")], num_classes=num_classes)[0]


def test_the_ignore_label_is_not_an_unknown_class(tmp_path):
    Image.fromarray(_rgb(np.random.default_rng(0), 1, 2)).save(tmp_path / "i.png")
    Image.fromarray(np.array([[IGNORE, 1]], np.uint8), mode="L").save(tmp_path / "m.png")
    assert _dataset([(tmp_path / "i.png", tmp_path / "m.png")])[0][1].tolist() == [[IGNORE, 1]]


@pytest.mark.parametrize("corrupt", ["image", "mask"])
def test_a_corrupt_file_is_a_bad_sample_that_names_it(tmp_path, corrupt):
    Image.fromarray(_rgb(np.random.default_rng(0), 6, 8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((6, 8), np.uint8), mode="L").save(tmp_path / "m.png")
    name = "i.png" if corrupt == "image" else "m.png"
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadSampleError, match=rf"cannot read .*{name}"):
        _dataset([(tmp_path / "i.png", tmp_path / "m.png")])[0]


def test_list_file_pairs_images_with_masks_and_refuses_a_missing_file(tmp_path):
    for name in ("p", "q"):
        Image.fromarray(_rgb(np.random.default_rng(0), 2, 2)).save(tmp_path / f"{name}.jpg")
        Image.fromarray(np.zeros((2, 2), np.uint8), mode="L").save(tmp_path / f"{name}_mask.png")
    (tmp_path / "list.txt").write_text("# image mask\nq.jpg q_mask.png\n\np.jpg p_mask.png  # second\n")
    pairs = read_pair_list(tmp_path / "list.txt", tmp_path)
    assert pairs == [(tmp_path / "q.jpg", tmp_path / "q_mask.png"), (tmp_path / "p.jpg", tmp_path / "p_mask.png")]
    (tmp_path / "bad.txt").write_text("p.jpg missing.png\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 1: mask file .*missing\.png does not exist"):
        read_pair_list(tmp_path / "bad.txt", tmp_path)


def test_n_band_tiff_images_pair_with_npy_masks(tmp_path):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 65536, size=(5, 4, 6), dtype=np.uint16)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "images" / "validation" / "scene.tif", bands, photometric="minisblack")
    labels = rng.integers(0, 3, size=(4, 6)).astype(np.int64)
    np.save(tmp_path / "annotations" / "validation" / "scene.npy", labels)
    dataset = _dataset(
        ade20k_pairs(tmp_path, "validation"),
        num_classes=3,
        reader=ImageReader(in_chans=5),
        transform=eval_transform(mean=[0.0] * 5, std=[1.0] * 5),
    )
    image, mask = dataset[0]
    np.testing.assert_allclose(image.numpy(), bands.astype(np.float64) / 65535, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(mask.numpy(), labels)


def test_random_rescale_follows_mmseg_resize_with_ratio_range():
    random.seed(3)
    image = torch.zeros(3, 100, 50)
    (out,) = [RandomRescale((2048, 512))(image)]
    random.seed(3)
    r = random.uniform(0.5, 2.0)
    factor = min(2048 * r / 100, 512 * r / 50)  # long side <= 2048 r, short side <= 512 r, aspect kept
    assert tuple(out.shape[-2:]) == (int(100 * factor + 0.5), int(50 * factor + 0.5))


def test_training_pipeline_moves_image_and_mask_together_and_pads_the_mask_with_ignore(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(20, 30)).astype(np.uint8)
    pixels = np.repeat((labels * 60)[..., None], 3, axis=2).astype(np.uint8)  # each class its own grey level
    Image.fromarray(pixels).save(tmp_path / "i.png")
    Image.fromarray(labels, mode="L").save(tmp_path / "m.png")
    transform = train_transform(
        (24, 24), scale=(30, 20), ratios=(1.0, 1.0), mean=[0.0] * 3, std=[1.0] * 3, photometric=False
    )  # scale = the image's own (long, short) and ratio 1: no resizing, so grey levels stay exact
    dataset = _dataset([(tmp_path / "i.png", tmp_path / "m.png")], transform=transform)
    for seed in range(5):
        torch.manual_seed(seed)
        random.seed(seed)
        image, mask = dataset[0]
        assert tuple(image.shape) == (3, 24, 24) and tuple(mask.shape) == (24, 24)
        assert (mask[20:] == IGNORE).all() and (image[:, 20:] == 0).all()  # 20 rows padded to 24
        inside = mask != IGNORE
        torch.testing.assert_close(image[0][inside] * 255, mask[inside].float() * 60)


def test_photometric_distortion_changes_the_image_only_and_needs_rgb():
    torch.manual_seed(0)
    random.seed(0)
    labels = torch.arange(16).reshape(4, 4) % 3
    transform = train_transform((4, 4), scale=(4, 4), ratios=(1.0, 1.0), mean=[0.0] * 3, std=[1.0] * 3, hflip=False)
    changed = 0
    for _ in range(8):
        image = tv_tensors.Image(torch.rand(3, 4, 4))
        out_image, out_mask = transform(image, tv_tensors.Mask(labels))
        assert torch.equal(out_mask, labels)
        changed += not torch.allclose(out_image, image)
    assert changed > 0
    with pytest.raises(ValueError, match="needs RGB images"):
        train_transform((4, 4), scale=(4, 4), mean=[0.0] * 5, std=[1.0] * 5)
