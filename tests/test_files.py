"""The data kit (``anymae.core.data.files``): one list syntax for every modality, class folders, classes files, the
data root and channel checks, with errors that name the file and the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from anymae.core.data.files import (
    check_channel_stats,
    check_input_shape,
    class_folder_samples,
    class_folders,
    find_files,
    generate_once,
    read_classes_file,
    read_file_list,
    resolve_data_file,
    resolve_data_root,
)
from anymae.core.data.samples import DataError, DatasetTraits, DatasetWithTraits, SafeDataset, dataset_traits
from anymae.core.evaluate.classification import LabelledSafeDataset

LIST = """# a header comment
a/one.jpg 0

b/two.jpg dog   # a label by name, then a comment
/abs/three.jpg
   c/four.jpg    1
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _touch(path: Path) -> Path:
    return _write(path, "")


def test_list_lines_skip_comments_and_blanks_and_take_labels_by_index_or_name(tmp_path):
    listing = _write(tmp_path / "train.txt", LIST)
    items = read_file_list(listing, tmp_path, classes=["cat", "dog"], check_files=False)
    assert items == [
        (tmp_path / "a/one.jpg", 0),
        (tmp_path / "b/two.jpg", 1),
        (Path("/abs/three.jpg"), None),
        (tmp_path / "c/four.jpg", 1),
    ]


def test_a_line_without_a_label_is_none(tmp_path):
    listing = _write(tmp_path / "l.txt", "x.jpg\ny.jpg 3\n")
    assert [label for _, label in read_file_list(listing, tmp_path, check_files=False)] == [None, 3]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a.jpg cat", r"the label must be a class index \(an integer >= 0\) or one of the 2 class names, got 'cat'"),
        ("a.jpg -1", r"the label must be a class index .*'-1'"),
        ("a.jpg 2", r"label 2 is outside the 2 classes \(0\.\.1\)"),
        ("a.jpg 0 extra", r"expected 'relative/path \[label\]', got 3 columns"),
    ],
)
def test_a_bad_line_names_the_list_file_and_the_line(tmp_path, line, expected):
    listing = _write(tmp_path / "train.txt", f"# header\nok.jpg 0\n\n{line}\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, line 4: {expected}"):
        read_file_list(listing, tmp_path, classes=["ant", "bee"], check_files=False)


def test_labelled_lists_need_a_label_on_every_line(tmp_path):
    listing = _write(tmp_path / "train.txt", "a.jpg 0\nb.jpg\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, line 2: no label"):
        read_file_list(listing, tmp_path, labelled=True, check_files=False)


def test_listed_files_must_exist_when_checked(tmp_path):
    _touch(tmp_path / "here.wav")
    listing = _write(tmp_path / "l.txt", "here.wav\ngone.wav\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, line 2: sound file .*gone\.wav does not exist"):
        read_file_list(listing, tmp_path, what="sound")


def test_a_list_of_only_comments_lists_nothing_and_is_an_error(tmp_path):
    listing = _write(tmp_path / "l.txt", "# nothing\n\n   # still nothing\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))} lists no videos"):
        read_file_list(listing, tmp_path, what="video")


def test_paths_with_blanks_where_allowed_take_the_last_column_as_label_only_when_it_is_one(tmp_path):
    listing = _write(tmp_path / "l.csv", "my clip.mp4 2\nmy other clip.mp4\nyet another.mp4 dog\n")
    items = read_file_list(listing, tmp_path, classes=["cat", "dog", "emu"], check_files=False, spaces_in_paths=True)
    assert items == [
        (tmp_path / "my clip.mp4", 2),
        (tmp_path / "my other clip.mp4", None),
        (tmp_path / "yet another.mp4", 1),
    ]


def test_an_integer_label_is_an_index_even_when_a_class_is_named_like_one(tmp_path):
    listing = _write(tmp_path / "l.txt", "a.jpg 1\n")
    assert read_file_list(listing, tmp_path, classes=["1", "0"], check_files=False) == [(tmp_path / "a.jpg", 1)]


def test_classes_file_skips_comments_and_refuses_repeats_and_single_classes(tmp_path):
    names = _write(tmp_path / "names.txt", "# index: name\ncat\n\ndog  # the second\nemu\n")
    assert read_classes_file(names) == ["cat", "dog", "emu"]
    with pytest.raises(DataError, match=r"more than once: \['cat'\]"):
        read_classes_file(_write(tmp_path / "twice.txt", "cat\ndog\ncat\n"))
    with pytest.raises(DataError, match="at least 2 class names"):
        read_classes_file(_write(tmp_path / "one.txt", "cat\n"))


def test_class_folders_number_files_by_the_training_classes_and_filter_extensions(tmp_path):
    for name in ("train/dog/b.png", "train/dog/a.JPG", "train/cat/c.jpg", "train/cat/notes.txt", "val/dog/d.jpg"):
        _touch(tmp_path / name)
    _touch(tmp_path / "val" / "loose.jpg")  # outside a class folder: not labelled
    classes = class_folders(tmp_path / "train")
    assert classes == ["cat", "dog"]
    samples = class_folder_samples(tmp_path / "train", classes, extensions=(".jpg", ".png"))
    assert [(p.name, label) for p, label in samples] == [("c.jpg", 0), ("a.JPG", 1), ("b.png", 1)]
    held = class_folder_samples(tmp_path / "val", classes, extensions=(".jpg",), at_least=1)
    assert [(p.name, label) for p, label in held] == [("d.jpg", 1)]
    _touch(tmp_path / "val" / "yak" / "y.jpg")
    with pytest.raises(DataError, match=r"class folders \['yak'\] that are not among the classes"):
        class_folder_samples(tmp_path / "val", classes, extensions=(".jpg",))
    with pytest.raises(DataError, match=r"needs at least 2 class sub-folder\(s\).*found 0"):
        class_folders(tmp_path / "train" / "cat")


def test_find_files_is_sorted_recursive_and_case_blind(tmp_path):
    for name in ("b/x.WAV", "a.wav", "c.mp3", "d/e/f.wav"):
        _touch(tmp_path / name)
    assert [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path, (".wav",))] == [
        "a.wav",
        "b/x.WAV",
        "d/e/f.wav",
    ]


def test_data_root_resolves_builtin_names_and_refuses_empty_or_missing_folders(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    builtin = {"builtin:demo": lambda: demo}
    assert resolve_data_root("builtin:demo", holds="train/", builtin=builtin) == demo
    assert resolve_data_root(str(tmp_path), holds="train/") == tmp_path
    with pytest.raises(DataError, match=r"data\.root is required: a folder holding train/, or 'builtin:demo'"):
        resolve_data_root("", holds="train/", builtin=builtin)
    with pytest.raises(DataError, match=r"data\.root: folder .*nope does not exist"):
        resolve_data_root(str(tmp_path / "nope"), holds="train/")


def test_data_files_are_found_under_the_root_or_named_by_their_config_key(tmp_path):
    listing = _touch(tmp_path / "lists" / "a.txt")
    assert resolve_data_file("lists/a.txt", tmp_path, key="train_list") == listing
    assert resolve_data_file(str(listing), tmp_path / "elsewhere", key="train_list") == listing
    with pytest.raises(DataError, match=r"data\.classes_file: file .*b\.txt does not exist"):
        resolve_data_file("b.txt", tmp_path, key="classes_file")


def test_generate_once_writes_through_a_staging_folder_and_then_reuses_it(tmp_path):
    calls = []

    def write(staging: Path) -> None:
        calls.append(staging)
        _touch(staging / "train" / "x.bin")

    def complete(root: Path) -> bool:
        return (root / "train").is_dir()

    target = tmp_path / "cache" / "demo-v1"
    assert generate_once(target, write, complete=complete) == target
    assert (target / "train" / "x.bin").is_file() and calls[0] != target and not calls[0].exists()
    generate_once(target, write, complete=complete)
    assert len(calls) == 1


def test_channel_checks_name_the_counts():
    check_channel_stats((0.5,) * 3, (0.2,) * 3, 3)
    with pytest.raises(DataError, match=r"data\.mean/std have 3 values for 4 channels \(in_chans\); measure them"):
        check_channel_stats((0.5,) * 3, (0.2,) * 3, 4, hint="; measure them")
    check_input_shape(torch.zeros(2, 3, 8, 8), (3, 8, 8), what="images", axes="(N, C, H, W)")
    with pytest.raises(ValueError, match=r"expected images \(N, 3, 8, 8\) = \(N, C, H, W\), got \(2, 1, 8, 8\)"):
        check_input_shape(torch.zeros(2, 1, 8, 8), (3, 8, 8), what="images", axes="(N, C, H, W)")


# --- dataset traits (anymae.core.data.samples) ----------------------------------------------------------------------
class _Declared(DatasetWithTraits):
    traits = DatasetTraits(classes=("a", "b"), multi_label=True, num_views=3)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return torch.zeros(3, 2), torch.tensor([1.0, 0.0])


def test_traits_are_declared_defaults_for_a_plain_dataset_and_forwarded_by_the_safe_wrappers():
    assert dataset_traits(TensorDataset(torch.zeros(2, 1))) == DatasetTraits()
    declared = _Declared()
    assert dataset_traits(declared).num_views == 3
    assert dataset_traits(SafeDataset(declared)) == declared.traits
    assert dataset_traits(LabelledSafeDataset(declared)).classes == ("a", "b")


def test_labelled_image_folders_declare_their_classes(tiny_image_folder):
    from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig

    dataset = ImageModality().build_labelled_dataset(
        ImageDataConfig(root=str(tiny_image_folder), heldout_split=None),
        ImageTokenizerConfig(img_size=32, patch_size=8),
        split="train",
        augment=None,
    )
    traits = dataset_traits(dataset)
    assert traits.classes == ("cats", "dogs") and not traits.multi_label and traits.num_views == 1
