"""The data kit every modality uses for files on disk: list files, class folders, classes files, the data root
and channel checks. Modality-agnostic: callers pass their file extensions and say what a file is ("image").

**List files** (``data.train_list``, a video split's ``<split>.csv``, ...) have one syntax everywhere::

    # a comment: from '#' to the end of the line; blank lines are skipped
    train/cats/cat0.jpg 0          # path, then a class index (an integer >= 0)
    train/dogs/dog0.jpg dog        # ... or a class name, when the classes are known (a classes file)
    /data/extra/x.jpg              # no label: None (pre-training ignores labels)

- ``path`` is relative to the data root unless absolute (``~`` expands); one file per line.
- The label is optional. An integer is always a class index (even when a class is named "3"); any other
  word must be one of the known class names and becomes that name's index.
- Columns are separated by blanks. A path containing blanks is allowed only where the caller allows it
  (``spaces_in_paths=True``, the video lists of VideoMAE): the last column is then the label when it is one
  (an integer, or a known class name), else the whole line is the path; elsewhere more than two columns is
  an error, which catches a stray column.
- Every problem is a :class:`~anymae.core.data.samples.DataError` naming the list file and the line
  (``train.txt, line 4: ...``): a bad label, a label outside the classes, a missing file (``check_files``),
  a missing label where one is required (``labelled``). A list of no lines at all is an error too.

**Class folders**: ``folder/<class>/<file>``, classes numbered by their sorted names (torchvision's
ImageFolder); :func:`class_folders` lists them, :func:`class_folder_samples` numbers a split's files by the
training split's classes. **Classes files**: one class name per line, line i naming class i (same comments and
blank lines as list files), :func:`read_classes_file`.

**Data root**: :func:`resolve_data_root` turns ``data.root`` into a folder; names such as
``builtin:demo_photos`` map to bundled (or generated-on-first-use, :func:`generate_once`) demo data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from anymae.core.data.samples import DataError

__all__ = [
    "ListedFile",
    "cache_dir",
    "check_channel_stats",
    "check_input_shape",
    "class_folder_samples",
    "class_folders",
    "find_files",
    "generate_once",
    "read_classes_file",
    "read_file_list",
    "resolve_data_file",
    "resolve_data_root",
    "under_root",
]

ListedFile = tuple[Path, int | None]  # (file, class index, or None for a line without a label)


# --- paths ---------------------------------------------------------------------------------------------------
def under_root(name: str | Path, root: Path) -> Path:
    """``name`` as given when absolute (after ``~`` expansion), else ``root / name``."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def resolve_data_file(name: str, root: Path, *, key: str) -> Path:
    """``data.<key>`` (a list or classes file) -> the file: absolute as given, relative under ``root``
    (like mmpretrain's ``ann_file`` under ``data_root``); it must exist."""
    path = under_root(name, root)
    if not path.is_file():
        raise DataError(f"data.{key}: file {path} does not exist")
    return path


def resolve_data_root(root: str, *, holds: str, builtin: Mapping[str, Callable[[], Path]] | None = None) -> Path:
    """``data.root`` -> an existing folder. ``builtin`` maps names such as ``"builtin:demo_photos"`` to a
    function returning the bundled (or generated) folder; anything else is a filesystem path. ``holds``
    says what the folder should hold, for the message when ``data.root`` is empty."""
    builtin = builtin or {}
    if not root:
        names = "".join(f", or {name!r}" for name in builtin)
        raise DataError(f"data.root is required: a folder holding {holds}{names}")
    path = builtin[root]() if root in builtin else Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root: folder {path} does not exist")
    return path


def cache_dir() -> Path:
    """Where generated demo data sets live: ``$ANYMAE_CACHE``, default ``~/.cache/anymae``."""
    return Path(os.environ.get("ANYMAE_CACHE", Path.home() / ".cache" / "anymae")).expanduser()


def generate_once(target: Path, write: Callable[[Path], None], *, complete: Callable[[Path], bool]) -> Path:
    """``target`` when ``complete(target)``; else ``write(staging)`` into a temporary sibling folder renamed into
    place, so that a half-written set is never used and concurrent first runs agree (demo data sets)."""
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        if target.exists() and not complete(target):  # an older, interrupted attempt
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: use its copy
            if not complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return target


def find_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Every file below ``folder`` (any depth) whose suffix, lower-cased, is in ``extensions``; sorted, so the
    order is the same on every machine."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())


# --- class folders -------------------------------------------------------------------------------------------
def class_folders(folder: Path, *, at_least: int = 2) -> list[str]:
    """The sorted names of ``folder``'s sub-folders (torchvision ImageFolder's class numbering); at least
    ``at_least`` of them (a held-out split may lack classes: 1)."""
    if not folder.is_dir():
        raise DataError(f"labelled split: folder {folder} does not exist")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(found) < at_least:
        raise DataError(
            f"{folder} needs at least {at_least} class sub-folder(s) (<split>/<class>/<file>) for classification, "
            f"found {len(found)}: {found}"
        )
    return found


def class_folder_samples(
    folder: Path, classes: Sequence[str], *, extensions: Sequence[str], at_least: int = 2
) -> list[tuple[Path, int]]:
    """``folder/<class>/<file>`` -> [(file, index of its class in ``classes``)], class by class, files sorted.

    ``classes`` is the training split's numbering, shared by every split: a class folder not among them is an
    error; files outside class folders are not labelled and are left out."""
    found = class_folders(folder, at_least=at_least)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{folder} has class folders {unknown[:10]} that are not among the classes {list(classes)[:10]}"
        )
    index = {name: i for i, name in enumerate(classes)}
    samples = [(f, index[c]) for c in found for f in find_files(folder / c, extensions)]
    if not samples:
        raise DataError(f"no files ({' '.join(extensions)}) in the class folders of {folder}")
    return samples


# --- list files and classes files ----------------------------------------------------------------------------
def _content_lines(path: Path) -> list[tuple[int, str]]:
    """(line number from 1, text without its comment and outer blanks) for every non-blank line of ``path``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    stripped = ((n, raw.split("#", 1)[0].strip()) for n, raw in enumerate(text.splitlines(), start=1))
    return [(n, line) for n, line in stripped if line]


def read_classes_file(path: Path) -> list[str]:
    """A classes file -> class names, line i naming class index i (blank lines and ``#`` comments skipped);
    at least 2 names, each once."""
    names = [line for _, line in _content_lines(path)]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"data.classes_file: {path} names these classes more than once: {repeated}")
    if len(names) < 2:
        raise DataError(f"data.classes_file: {path} needs at least 2 class names (one per line), found {len(names)}")
    return names


def read_file_list(
    list_file: Path,
    root: Path,
    *,
    labelled: bool = False,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
    spaces_in_paths: bool = False,
    what: str = "file",
) -> list[ListedFile]:
    """A list file (see the module docstring) -> [(file, class index or None)], in list order.

    ``labelled``: every line must carry a label. ``classes``: the known class names; labels by name are
    allowed and every index must be below ``len(classes)``. ``check_files``: every listed file must exist
    (one ``stat`` per line, so that a wrong path fails at start-up rather than as a bad sample hours in).
    ``what`` names a listed file in messages ("image", "video")."""
    lookup = {name: i for i, name in enumerate(classes)} if classes is not None else {}
    items: list[ListedFile] = []
    for number, line in _content_lines(list_file):
        where = f"{list_file}, line {number}"
        name, label_text = _split_line(line, where, lookup, spaces_in_paths=spaces_in_paths)
        label = None if label_text is None else _label(label_text, where, lookup, classes)
        if label is None and labelled:
            raise DataError(f"{where}: no label; classification needs 'relative/path label' on every line")
        # os.path, then one Path: this runs once per line (1.28M lines for ImageNet)
        file = Path(os.path.join(root, os.path.expanduser(name)))
        if check_files and not os.path.isfile(file):
            raise DataError(f"{where}: {what} file {file} does not exist")
        items.append((file, label))
    if not items:
        raise DataError(f"{list_file} lists no {what}s (one 'relative/path [label]' per line)")
    return items


def _split_line(line: str, where: str, lookup: Mapping[str, int], *, spaces_in_paths: bool) -> tuple[str, str | None]:
    """A list line -> (path, label text or None)."""
    fields = line.split()
    if len(fields) == 1:
        return line, None
    if not spaces_in_paths:
        if len(fields) > 2:
            raise DataError(
                f"{where}: expected 'relative/path [label]', got {len(fields)} columns: {line!r} "
                "(paths with spaces are not supported)"
            )
        return fields[0], fields[1]
    last = fields[-1]
    if _is_integer(last) or last in lookup:
        return line[: -len(last)].rstrip(), last
    return line, None  # no label: the whole line is one path with blanks in it


def _is_integer(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return digits.isascii() and digits.isdigit()


def _label(text: str, where: str, lookup: Mapping[str, int], classes: Sequence[str] | None) -> int:
    """A label column -> a class index: an integer >= 0 (below ``len(classes)`` when known) or a class name."""
    if text.isascii() and text.isdigit():
        label = int(text)
    elif text in lookup:
        return lookup[text]
    else:
        names = f" or one of the {len(lookup)} class names" if lookup else ""
        raise DataError(f"{where}: the label must be a class index (an integer >= 0){names}, got {text!r}")
    if classes is not None and label >= len(classes):
        raise DataError(f"{where}: label {label} is outside the {len(classes)} classes (0..{len(classes) - 1})")
    return label


# --- channel checks ------------------------------------------------------------------------------------------
def check_channel_stats(mean: Sequence[float], std: Sequence[float], channels: int, *, hint: str = "") -> None:
    """``data.mean`` / ``data.std`` must give one value per input channel (``model.tokenizer.in_chans``);
    ``hint`` ends the message (e.g. how to measure them)."""
    if len(mean) != len(std):
        raise DataError(f"data.mean has {len(mean)} values but data.std has {len(std)}")
    if len(mean) != channels:
        raise DataError(f"data.mean/std have {len(mean)} values for {channels} channels (in_chans){hint}")


def check_input_shape(x: Tensor, expected: Sequence[int], *, what: str, axes: str) -> None:
    """A batch ``x`` must be ``(N, *expected)``: ``what`` names the inputs ("images") and ``axes`` their layout
    (``"(N, C, H, W)"``) in the ValueError."""
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        dims = ", ".join(str(d) for d in expected)
        raise ValueError(f"expected {what} (N, {dims}) = {axes}, got {tuple(x.shape)}")
