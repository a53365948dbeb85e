"""Image data: folder errors that name the key, unreadable files skipped with a warning, the paper's transforms."""

from __future__ import annotations

import copy
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from anymae.core import DataError, SafeDataset, pretrain
from anymae.core.config import resolve_config
from anymae.modalities.image.data import eval_transform, load_image, pretrain_transform


def _run(raw: dict) -> object:
    return pretrain(resolve_config(raw), progress=False)


def _corrupt_files(folder: Path) -> tuple[Path, Path]:
    """A text file named .jpg and a JPEG cut in half."""
    text = folder / "bad.jpg"
    text.write_text("this is not an image\n")
    good = next(folder.rglob("*.jpg"))
    truncated = folder / "truncated.jpg"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return text, truncated


def _denormalize(x: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


# --- folder errors -------------------------------------------------------------------------------------
def test_missing_data_folder_names_data_root(tmp_path, tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"]["root"] = str(tmp_path / "does-not-exist")
    with pytest.raises(DataError) as exc:
        _run(raw)
    assert "data.root" in str(exc.value)
    assert "does-not-exist" in str(exc.value)


def test_empty_data_folder_is_a_data_error(tmp_path, tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    empty = tmp_path / "empty"
    empty.mkdir()
    raw["data"]["root"] = str(empty)
    with pytest.raises(DataError, match="train"):
        _run(raw)


def test_train_split_without_images_is_a_data_error(tmp_path, tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    root = tmp_path / "no-images"
    (root / "train" / "cls").mkdir(parents=True)
    (root / "train" / "cls" / "notes.txt").write_text("no images here")
    raw["data"]["root"] = str(root)
    with pytest.raises(DataError) as exc:
        _run(raw)
    assert "no image files" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_fewer_images_than_the_batch_is_a_data_error(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["batch_size"] = 64
    with pytest.raises(DataError, match="batch_size=64"):
        _run(raw)


# --- unreadable files ----------------------------------------------------------------------------------
def test_load_image_names_an_unreadable_file(tmp_path, tiny_image_folder):
    from anymae.core import BadSampleError

    text, truncated = _corrupt_files(tiny_image_folder / "train" / "cats")
    for path in (text, truncated):
        with pytest.raises(BadSampleError, match=path.name):
            load_image(path, 3)


def test_unreadable_images_among_good_ones_warn_and_training_continues(tiny_image_folder, tiny_config_dict):
    text, truncated = _corrupt_files(tiny_image_folder / "train" / "cats")
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["max_bad_fraction"] = 0.25  # 2 of 10 files
    with pytest.warns(UserWarning) as record:
        result = _run(raw)
    messages = [str(w.message) for w in record]
    assert any(text.name in m for m in messages), messages
    assert any(truncated.name in m for m in messages), messages
    assert result.checkpoint.is_file()
    assert math.isfinite(result.train_loss)


def test_unreadable_heldout_image_warns_and_run_finishes(tiny_image_folder, tiny_config_dict):
    bad = tiny_image_folder / "val" / "bad.jpg"
    bad.write_text("not an image")
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["max_bad_fraction"] = 0.5
    with pytest.warns(UserWarning, match="bad.jpg"):
        result = _run(raw)
    assert result.heldout_loss is not None and math.isfinite(result.heldout_loss)


def test_too_many_unreadable_images_stop_with_a_data_error(tiny_image_folder, tiny_config_dict):
    _corrupt_files(tiny_image_folder / "train" / "cats")
    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["max_bad_fraction"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as exc:
            _run(raw)
    assert "max_bad_fraction" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_folder_of_only_broken_files_is_a_one_line_data_error(tmp_path, tiny_config_dict):
    root = tmp_path / "broken"
    (root / "train").mkdir(parents=True)
    for i in range(6):
        (root / "train" / f"b{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"].update(root=str(root), heldout_split=None)
    raw["train"]["max_bad_fraction"] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as exc:
            _run(raw)
    message = str(exc.value)
    assert "none of the 6 samples" in message
    assert re.search(r"b[0-5]\.jpg", message), message
    assert "\n" not in message


def test_safe_dataset_substitutes_the_next_readable_sample():
    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 1:
                raise OSError("broken file number 1")
            return i

    data = SafeDataset(Flaky(), max_bad_fraction=0.5)
    with pytest.warns(UserWarning, match="broken file number 1"):
        assert data[1] == {"input": 2, "bad": 1}
    assert [data[i]["input"] for i in range(4)] == [0, 2, 2, 3]
    assert [data[(5, i)]["bad"] for i in range(4)] == [0, 1, 0, 0]  # reported in every epoch, warned once


# --- transforms ----------------------------------------------------------------------------------------
def test_pretrain_transform_gives_the_tokenizer_size_normalized():
    transform = pretrain_transform(
        (32, 48), scale=(0.2, 1.0), hflip=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD
    )
    color = (200, 100, 50)
    x = transform(Image.new("RGB", (48, 40), color))
    assert x.shape == (3, 32, 48)  # (C, H, W)
    assert x.dtype == torch.float32
    expected = (torch.tensor(color) / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_pretrain_transform_is_random(tiny_image_folder):
    transform = pretrain_transform((32, 32), scale=(0.2, 1.0), hflip=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = load_image(next((tiny_image_folder / "train").rglob("*.png")), 3)
    torch.manual_seed(0)
    crops = [transform(image) for _ in range(4)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_eval_transform_center_crops_after_resizing_the_shorter_side():
    # 64x48 grey image with red 4-px stripes on the left and right edges: resizing the shorter side to
    # 32 / 0.875 = 36 makes it 48x36 with 3-px stripes; the 32x32 centre crop starts 8 px in, so no red.
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 4, 48))
    image.paste((255, 0, 0), (60, 0, 64, 48))
    transform = eval_transform((32, 32), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    x = transform(image)
    assert x.shape == (3, 32, 32)
    rgb = _denormalize(x)
    redness = (rgb[0] - rgb[1]).abs().max().item()
    assert redness < 0.02, redness
    torch.testing.assert_close(rgb[:, 16, 16], torch.full((3,), 128 / 255), atol=1e-2, rtol=0)
    assert torch.equal(transform(image), x)  # deterministic


def test_grey_config_pretrains(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["model"]["tokenizer"]["in_chans"] = 1
    raw["data"].update(mean=[0.5], std=[0.25])
    raw["train"]["epochs"] = 1
    result = _run(raw)
    assert math.isfinite(result.train_loss)
    assert result.figure is not None and result.figure.is_file()


def test_grey_config_with_rgb_statistics_names_in_chans(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["model"]["tokenizer"]["in_chans"] = 1
    with pytest.raises(DataError, match="in_chans"):
        _run(raw)
