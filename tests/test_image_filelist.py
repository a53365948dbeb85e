"""File lists (``data.train_list`` / ``data.heldout_list``): ``relative/path [label]`` lines for pre-training and
for the labelled datasets, with errors that name the list file and the line."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from anymae.core import pretrain
from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import resolve_config, resolve_model_config
from anymae.core.data.samples import DataError
from anymae.core.io.checkpoint import read_checkpoint, write_checkpoint
from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

TOKENIZER = ImageTokenizerConfig(img_size=32, patch_size=8)

# The fixture's tree: train/{cats,dogs}/{cats,dogs}{0..3}.{jpg,png} (even: jpg), val/v0.jpg, val/v1.png.
TRAIN_LIST = """# ImageNet-style list: path relative to data.root, class index
train/cats/cats0.jpg 0
train/cats/cats1.png 0

train/dogs/dogs0.jpg 1   # a trailing comment
train/dogs/dogs3.png 1
train/cats/cats2.jpg 0
train/dogs/dogs1.png 1
"""
HELDOUT_LIST = "train/cats/cats3.png 0\ntrain/dogs/dogs2.jpg 1\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _data(root: Path, **options: Any) -> ImageDataConfig:
    return ImageDataConfig(root=str(root), **options)


def _relative(files: list[Path], root: Path) -> list[str]:
    return [f.relative_to(root).as_posix() for f in files]


# --- pre-training ----------------------------------------------------------------------------------------------
def test_train_list_gives_exactly_the_listed_files_in_list_order(tiny_image_folder):
    _write(tiny_image_folder / "lists" / "train.txt", TRAIN_LIST)
    dataset = ImageModality().build_dataset(
        _data(tiny_image_folder, train_list="lists/train.txt"), TOKENIZER, split="train"
    )
    assert _relative(dataset.files, tiny_image_folder) == [
        "train/cats/cats0.jpg",
        "train/cats/cats1.png",
        "train/dogs/dogs0.jpg",
        "train/dogs/dogs3.png",
        "train/cats/cats2.jpg",
        "train/dogs/dogs1.png",
    ]
    assert dataset[0].shape == (3, 32, 32)


def test_list_lines_without_labels_and_absolute_list_paths_work_for_pretraining(tiny_image_folder, tmp_path):
    absolute = _write(tmp_path / "elsewhere" / "unlabelled.txt", "train/dogs/dogs2.jpg\ntrain/cats/cats3.png\n")
    data = _data(tiny_image_folder, train_list=str(absolute))
    dataset = ImageModality().build_dataset(data, TOKENIZER, split="train")
    assert _relative(dataset.files, tiny_image_folder) == ["train/dogs/dogs2.jpg", "train/cats/cats3.png"]


def test_heldout_list_replaces_the_heldout_folder(tiny_image_folder):
    _write(tiny_image_folder / "held.txt", HELDOUT_LIST)
    data = _data(tiny_image_folder, heldout_list="held.txt")  # heldout_split "val" exists but is not used
    heldout = ImageModality().build_dataset(data, TOKENIZER, split="heldout")
    assert _relative(heldout.files, tiny_image_folder) == ["train/cats/cats3.png", "train/dogs/dogs2.jpg"]


def test_pretraining_from_file_lists_runs_end_to_end(tiny_image_folder, tiny_config_dict):
    _write(tiny_image_folder / "train.txt", TRAIN_LIST)
    _write(tiny_image_folder / "held.txt", HELDOUT_LIST)
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"].update(train_list="train.txt", heldout_list="held.txt", train_split="no-such-folder")
    raw["train"]["epochs"] = 1
    result = pretrain(resolve_config(raw), progress=False)
    assert result.checkpoint.is_file()
    assert math.isfinite(result.train_loss) and math.isfinite(result.heldout_loss)


# --- errors name the list file and the line -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("train/cats/missing.jpg 0", "image file .*missing.jpg does not exist"),
        ("train/cats/cats0.jpg zero", "the label must be a class index .*'zero'"),
        ("train/cats/cats0.jpg -1", "the label must be a class index .*'-1'"),
        ("train/cats/cats0.jpg 0 extra", "expected 'relative/path \\[label\\]', got 3 columns"),
    ],
)
def test_a_bad_line_is_an_error_naming_the_list_file_and_line_number(tiny_image_folder, line, expected):
    listing = _write(tiny_image_folder / "train.txt", f"# header\ntrain/cats/cats0.jpg 0\n\n{line}\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, line 4: {expected}"):
        ImageModality().build_dataset(_data(tiny_image_folder, train_list="train.txt"), TOKENIZER, split="train")


def test_a_missing_list_file_names_the_config_key(tiny_image_folder):
    with pytest.raises(DataError, match=r"data\.train_list: file .*nope\.txt does not exist"):
        ImageModality().build_dataset(_data(tiny_image_folder, train_list="nope.txt"), TOKENIZER, split="train")


def test_a_list_of_only_comments_is_an_error(tiny_image_folder):
    listing = _write(tiny_image_folder / "train.txt", "# nothing here\n\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))} lists no images"):
        ImageModality().build_dataset(_data(tiny_image_folder, train_list="train.txt"), TOKENIZER, split="train")


# --- labelled datasets -----------------------------------------------------------------------------------------
def test_labelled_list_gives_the_line_labels_and_numbered_classes(tiny_image_folder):
    _write(tiny_image_folder / "train.txt", TRAIN_LIST)
    _write(tiny_image_folder / "held.txt", HELDOUT_LIST)
    data = _data(tiny_image_folder, train_list="train.txt", heldout_list="held.txt")
    modality = ImageModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment=None)
    heldout = modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert train.classes == heldout.classes == ["0", "1"]
    assert [(f.name, label) for f, label in train.samples] == [
        ("cats0.jpg", 0),
        ("cats1.png", 0),
        ("dogs0.jpg", 1),
        ("dogs3.png", 1),
        ("cats2.jpg", 0),
        ("dogs1.png", 1),
    ]
    assert [(f.name, label) for f, label in heldout.samples] == [("cats3.png", 0), ("dogs2.jpg", 1)]
    image, label = heldout[1]
    assert image.shape == (3, 32, 32) and label == 1


def test_classes_file_names_the_labels_and_bounds_them(tiny_image_folder):
    _write(tiny_image_folder / "train.txt", TRAIN_LIST)
    _write(tiny_image_folder / "names.txt", "# index: name\ncat\ndog\n\nbird\n")
    data = _data(tiny_image_folder, train_list="train.txt", classes_file="names.txt", heldout_list="held.txt")
    dataset = ImageModality().build_labelled_dataset(data, TOKENIZER, split="train", augment=None)
    assert dataset.classes == ["cat", "dog", "bird"]  # a class without samples keeps its index
    held = _write(tiny_image_folder / "held.txt", "train/cats/cats3.png 0\ntrain/dogs/dogs2.jpg 3\n")
    expected = rf"{re.escape(str(held))}, line 2: label 3 is outside the 3 classes \(0\.\.2\)"
    with pytest.raises(DataError, match=expected):
        ImageModality().build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)


def test_labelled_list_lines_need_a_label(tiny_image_folder):
    listing = _write(tiny_image_folder / "train.txt", "train/cats/cats0.jpg 0\ntrain/dogs/dogs0.jpg\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, line 2: no label"):
        ImageModality().build_labelled_dataset(
            _data(tiny_image_folder, train_list="train.txt"), TOKENIZER, split="train", augment=None
        )


def test_train_list_with_a_heldout_folder_or_classes_file_with_folders_are_errors(tiny_image_folder):
    _write(tiny_image_folder / "train.txt", TRAIN_LIST)
    _write(tiny_image_folder / "names.txt", "cat\ndog\n")
    modality = ImageModality()
    with pytest.raises(DataError, match=r"data\.heldout_list"):
        modality.build_labelled_dataset(
            _data(tiny_image_folder, train_list="train.txt"), TOKENIZER, split="heldout", augment=None
        )
    with pytest.raises(DataError, match=r"data\.classes_file names the labels of data\.train_list"):
        modality.build_labelled_dataset(
            _data(tiny_image_folder, classes_file="names.txt"), TOKENIZER, split="train", augment=None
        )


def test_heldout_list_indexes_the_training_class_folders(tiny_image_folder):
    _write(tiny_image_folder / "held.txt", HELDOUT_LIST)
    dataset = ImageModality().build_labelled_dataset(
        _data(tiny_image_folder, heldout_list="held.txt"), TOKENIZER, split="heldout", augment=None
    )
    assert dataset.classes == ["cats", "dogs"]
    assert [label for _, label in dataset.samples] == [0, 1]


def test_linear_probe_from_file_lists_through_the_cli(tiny_image_folder, tmp_path, capsys):
    _write(tiny_image_folder / "train.txt", TRAIN_LIST + "train/cats/cats3.png 0\ntrain/dogs/dogs2.jpg 1\n")
    _write(tiny_image_folder / "held.txt", HELDOUT_LIST)
    _write(tiny_image_folder / "names.txt", "cat\ndog\n")
    torch.manual_seed(0)
    mae = build_model(
        resolve_model_config(
            {
                "modality": "image",
                "tokenizer": {"img_size": 32, "patch_size": 8},
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
                "decoder_embed_dim": 16,
                "decoder_depth": 1,
                "decoder_num_heads": 2,
            }
        )
    )
    pretrained = write_checkpoint(
        {"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()}, tmp_path / "p.pt"
    )
    runs = tmp_path / "cls"
    args = [
        "linprobe",
        "demo_image_linprobe",
        "preset=lars",  # the SGD loop (the config's default solver is lbfgs)
        f"linprobe.checkpoint={pretrained}",
        f"data.root={tiny_image_folder}",
        "data.train_list=train.txt",
        "data.heldout_list=held.txt",
        "data.classes_file=names.txt",
        "train.epochs=1",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.device=cpu",
        f"train.output_dir={runs}",
        "--no-progress",
    ]
    assert main(args) == 0
    best = runs / "demo_image_linprobe" / "checkpoint-best.pt"
    assert read_checkpoint(best)["config"]["classes"] == ["cat", "dog"]
    capsys.readouterr()
    assert main(["eval", str(best), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("heldout: 2 samples")
