"""File lists: ``data.train_list`` / ``data.heldout_list``, text files of ``relative/path [label]`` lines.

The format of the ImageNet list files that many codebases ship (``train.txt``: ``n01440764/x.JPEG 0``): one
image per line, its path relative to ``data.root`` (or absolute), optionally a space and an integer class
index; ``#`` starts a comment, blank lines are skipped. A list file given as a relative path is found under
``data.root`` too (like mmpretrain's ``ann_file`` under ``data_root``). Every problem is an error naming the
list file and the line: a listed image that does not exist, a missing or non-integer label, extra columns.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from anymae.core.data import DataError

__all__ = ["ListedFile", "read_class_names", "read_file_list", "resolve_list_path"]

ListedFile = tuple[Path, int | None]  # (image file, class index or None when the line has no label)


def resolve_list_path(list_path: str, root: Path, *, key: str) -> Path:
    """``data.<key>`` -> the list file: absolute as given, relative under ``root``; it must exist."""
    path = Path(list_path).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"data.{key}: file {path} does not exist")
    return path


def read_file_list(
    list_file: Path,
    root: Path,
    *,
    labelled: bool,
    num_classes: int | None = None,
    check_files: bool = True,
) -> list[ListedFile]:
    """``path [label]`` lines -> [(file, label)]. ``labelled``: every line must carry a label (a class
    index >= 0, below ``num_classes`` when given); otherwise a label is optional (checked, then ignored by
    pre-training). ``check_files``: every listed image must exist (one ``stat`` per line, so that a wrong
    path fails at start-up rather than as a bad sample hours in)."""
    items = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        file, label = _parse_line(line, f"{list_file}, line {number}", root, labelled=labelled)
        if label is not None and num_classes is not None and label >= num_classes:
            raise DataError(
                f"{list_file}, line {number}: label {label} is outside the {num_classes} classes (0..{num_classes - 1})"
            )
        if check_files and not os.path.isfile(file):
            raise DataError(f"{list_file}, line {number}: image file {file} does not exist")
        items.append((file, label))
    if not items:
        raise DataError(f"{list_file} lists no images (one 'relative/path [label]' per line)")
    return items


def _parse_line(line: str, where: str, root: Path, *, labelled: bool) -> ListedFile:
    fields = line.split()
    if len(fields) > 2:
        raise DataError(
            f"{where}: expected 'relative/path [label]', got {len(fields)} columns: {line!r} "
            "(paths with spaces are not supported)"
        )
    label = None
    if len(fields) == 2:
        if not (fields[1].isascii() and fields[1].isdigit()):
            raise DataError(f"{where}: the label must be a class index (an integer >= 0), got {fields[1]!r}")
        label = int(fields[1])
    elif labelled:
        raise DataError(f"{where}: no label; classification needs 'relative/path label' on every line")
    # os.path, then one Path: this runs once per line (1.28M lines for ImageNet)
    return Path(os.path.join(root, os.path.expanduser(fields[0]))), label


def read_class_names(path: Path) -> list[str]:
    """``data.classes_file`` (found by :func:`resolve_list_path`): one class name per line, line i (blank lines
    and ``#`` comments skipped) naming class index i; names must be unique."""
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"data.classes_file: {path} names these classes more than once: {repeated}")
    if len(names) < 2:
        raise DataError(f"data.classes_file: {path} needs at least 2 class names (one per line), found {len(names)}")
    return names
