"""The segmentation demo set: ADE20K layout, every mask pixel the class of the shape drawn on top."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anymae.modalities.image.data import ImageReader, demo_photos_root, find_images
from anymae.modalities.image.segment_demo import (
    CLASSES,
    TEXTURE_CLASSES,
    demo_segment_root,
    make_demo_pair,
    write_demo_segment,
)
from anymae.modalities.image.segmentation import SegmentationFiles, ade20k_pairs, eval_transform


def test_demo_pairs_are_deterministic_and_masks_mark_the_changed_pixels():
    photos = find_images(demo_photos_root() / "train")
    image, mask = make_demo_pair(7, photos)
    again, same_mask = make_demo_pair(7, photos)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, same_mask)
    assert set(np.unique(mask)) <= set(range(len(CLASSES))) and len(np.unique(mask)) >= 2
    # The background keeps the photo: redraw with no shapes by masking them out, pixel by pixel.
    rng = np.random.default_rng(7)
    with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
        photo = photo.convert("RGB")
        top, left = int(rng.integers(photo.height - 63)), int(rng.integers(photo.width - 63))
        crop = np.asarray(photo.crop((left, top, left + 64, top + 64)))
    np.testing.assert_array_equal(image[mask == 0], crop[mask == 0])


def test_demo_set_is_written_once_in_the_ade20k_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYMAE_CACHE", str(tmp_path))
    root = demo_segment_root()
    assert root == demo_segment_root()
    train, validation = ade20k_pairs(root, "training"), ade20k_pairs(root, "validation")
    assert len(train) == 400 and len(validation) == 100
    assert all(mask is not None for _, mask in train + validation)
    dataset = SegmentationFiles(
        validation, reader=ImageReader(in_chans=3), transform=eval_transform(mean=[0.0] * 3, std=[1.0] * 3),
        num_classes=len(CLASSES),
    )  # fmt: skip
    image, mask = dataset[0]
    assert tuple(image.shape) == (3, 64, 64) and tuple(mask.shape) == (64, 64)


def test_texture_variant_labels_each_object_by_its_fill_pattern():
    photos = find_images(demo_photos_root() / "train")
    image, mask = make_demo_pair(3, photos, variant="textures")
    again, same_mask = make_demo_pair(3, photos, variant="textures")
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, same_mask)
    assert set(np.unique(mask)) <= set(range(len(TEXTURE_CLASSES))) and len(np.unique(mask)) >= 2
    plain, one_colour = TEXTURE_CLASSES.index("plain"), {True: [], False: []}
    for seed in range(40):  # a plain object is one colour, a patterned one two (unless overlapped by its class)
        image, mask = make_demo_pair(seed, photos, variant="textures")
        for cls in set(np.unique(mask).tolist()) - {0}:
            one_colour[cls == plain].append(len(np.unique(image[mask == cls], axis=0)) == 1)
    assert np.mean(one_colour[True]) > 0.6 and np.mean(one_colour[False]) < 0.1  # 2 plain objects: 2 colours


def test_unknown_variant_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: \\['shapes', 'textures'\\]"):
        make_demo_pair(0, [], variant="stripes")


def test_written_set_has_an_unlabelled_pool_disjoint_from_the_labelled_images(tmp_path):
    root = write_demo_segment(tmp_path / "set", variant="textures", num_train=3, num_validation=2, num_unlabelled=4)
    assert len(ade20k_pairs(root, "training")) == 3 and len(ade20k_pairs(root, "validation")) == 2
    pool = sorted((root / "images" / "unlabelled").iterdir())
    assert len(pool) == 4 and not (root / "annotations" / "unlabelled").exists()
    labelled = [np.asarray(Image.open(f)) for f in (root / "images" / "training").iterdir()]
    assert all(not np.array_equal(np.asarray(Image.open(f)), x) for f in pool for x in labelled)
